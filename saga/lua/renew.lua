-- renew.lua: extend a lease only while it still carries this token (the heartbeat).
-- Caller: RedisStore.renew (the heartbeat).
-- KEYS[1] lease   ARGV[1] token   ARGV[2] ttl ms
-- Returns 1 when renewed, 0 when the lease was lost.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
