-- renew.lua: extend a lease only while it still carries this token (the heartbeat), and only
-- while no operator asked to cancel the run: a cancelled run's attempt (a hung step, say) then
-- loses its lease within one lease period, and the watchdog cancels the run without waiting for
-- the body to return.
-- Caller: RedisStore.renew (the heartbeat).
-- KEYS[1] lease   KEYS[2] meta   ARGV[1] token   ARGV[2] ttl ms
-- Returns 1 when renewed, 0 when the lease was lost (or a cancel was asked).
if redis.call('GET', KEYS[1]) == ARGV[1] then
  if redis.call('HEXISTS', KEYS[2], 'cancel') == 1 then return 0 end
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
