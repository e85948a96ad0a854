-- note.lua: append snapshot-neutral events on behalf of the coordinator (resume, operator actions).
-- Caller: RedisStore.note_events.
-- KEYS[1] meta   KEYS[2] events   KEYS[3] lease
-- ARGV[1] expected version ('' = any)   ARGV[2] '1' = refuse while a lease is live
-- ARGV[3] '1' = take a new fencing token (a zombie attempt of the old token can no longer commit)
-- ARGV[4] '1' = clear the parked mark (the run is resumed)   ARGV[5..] events
-- Returns {1, token} | {0, reason}  (reason: missing | version | leased)
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, 'missing'} end
if ARGV[1] ~= '' and redis.call('HGET', KEYS[1], 'version') ~= ARGV[1] then return {0, 'version'} end
if ARGV[2] == '1' and redis.call('EXISTS', KEYS[3]) == 1 then return {0, 'leased'} end
local token = ''
if ARGV[3] == '1' then token = tostring(redis.call('HINCRBY', KEYS[1], 'fence', 1)) end
if ARGV[4] == '1' then redis.call('HDEL', KEYS[1], 'parked') end
for i = 5, #ARGV do redis.call('RPUSH', KEYS[2], ARGV[i]) end
return {1, token}
