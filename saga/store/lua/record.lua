-- record.lua: append events that do not change the snapshot (a retry), on behalf of a fenced
-- attempt, and hand the lease over to the retry that will follow.
-- Caller: RedisStore.record_retry (a failed attempt that will be retried).
-- KEYS[1] meta   KEYS[2] events   KEYS[3] lease
-- ARGV[1] fencing token   ARGV[2] new lease value ('backoff:<next attempt>')   ARGV[3] its ttl ms
-- ARGV[4] the meta field holding the attempt's fence ('fence', or 'fence:<lane>' in a group)
-- ARGV[5..] events
-- Returns 1, or 0 when the token no longer holds the run (see commit.lua on fencing).
if redis.call('HGET', KEYS[1], ARGV[4]) ~= ARGV[1] then return 0 end
redis.call('RPUSH', KEYS[2], unpack(ARGV, 5))
redis.call('SET', KEYS[3], ARGV[2], 'PX', ARGV[3])
return 1
