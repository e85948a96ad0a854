-- park.lua: park a run that no worker here can move (its definition is missing or differs): record
-- why, and leave it untouched until a worker with its definition resumes it.
-- Caller: RedisStore.park (a delivery or the watchdog without the run's definition).
-- KEYS[1] meta   KEYS[2] events   KEYS[3] lease   KEYS[4] bucket's parked index
-- KEYS[5] (only with an archive) the bucket's archive feed
-- ARGV[1] reason   ARGV[2] expected version   ARGV[3] the saga.parked event, stored form
-- ARGV[4] now, s   ARGV[5] run id
-- Returns 'parked' | 'already' (parked before: nothing written) | 'leased' (an attempt holds the
-- run: someone with its definition moves it) | 'moved' (the version changed) | 'finished' | 'missing'
local m = redis.call('HMGET', KEYS[1], 'version', 'parked', 'status')
if not m[1] then return 'missing' end
if m[3] == 'completed' or m[3] == 'compensated' or m[3] == 'failed' then return 'finished' end
if m[1] ~= ARGV[2] then return 'moved' end
if redis.call('EXISTS', KEYS[3]) == 1 then return 'leased' end
if m[2] then return 'already' end
redis.call('HSET', KEYS[1], 'parked', ARGV[1])
redis.call('RPUSH', KEYS[2], ARGV[3])
redis.call('ZADD', KEYS[4], ARGV[4], ARGV[5])
if KEYS[5] then redis.call('XADD', KEYS[5], '*', 'r', ARGV[5]) end
return 'parked'
