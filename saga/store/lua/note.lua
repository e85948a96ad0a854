-- note.lua: append snapshot-neutral events on behalf of the coordinator (resume, operator actions).
-- Caller: RedisStore.note_events.
-- KEYS[1] meta   KEYS[2] events   KEYS[3] lease   KEYS[4] bucket's parked index
-- KEYS[5] bucket's active index   KEYS[6] (only with an archive) the bucket's archive feed
-- ARGV[1] expected version ('' = any)   ARGV[2] '1' = refuse while a lease is live
-- ARGV[3] '1' = take a new fencing token (a zombie attempt of the old token can no longer commit)
-- ARGV[4] '1' = the run is resumed: clear its parked mark and take it off the parked index
-- ARGV[5] run id   ARGV[6] watchdog deadline, s ('' = leave it)
-- ARGV[7] lane ('' = the run's; else a parallel group's lane, whose lease is KEYS[3] and whose
--   fence is dropped instead of moved on: its next begin takes a new token)
-- ARGV[8..] events, stored form
-- Returns {1, token} | {0, reason}  (reason: missing | version | leased)
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, 'missing'} end
if ARGV[1] ~= '' and redis.call('HGET', KEYS[1], 'version') ~= ARGV[1] then return {0, 'version'} end
if ARGV[2] == '1' and redis.call('EXISTS', KEYS[3]) == 1 then return {0, 'leased'} end
local token = ''
if ARGV[3] == '1' then
  if ARGV[7] == '' then
    token = tostring(redis.call('HINCRBY', KEYS[1], 'fence', 1))
  else
    redis.call('HDEL', KEYS[1], 'fence:' .. ARGV[7])
  end
end
if ARGV[4] == '1' then
  redis.call('HDEL', KEYS[1], 'parked')
  redis.call('ZREM', KEYS[4], ARGV[5])
end
if ARGV[6] ~= '' then redis.call('ZADD', KEYS[5], ARGV[6], ARGV[5]) end
if #ARGV >= 8 then
  redis.call('RPUSH', KEYS[2], unpack(ARGV, 8))
  if KEYS[6] then redis.call('XADD', KEYS[6], '*', 'r', ARGV[5]) end
end
return {1, token}
