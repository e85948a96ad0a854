-- create.lua: write a new run, or report the run that already has this id (start-key dedup).
-- Caller: RedisStore.create (start() of a run). One slot: the run's keys and its bucket's indexes.
-- KEYS[1] meta (hash)   KEYS[2] events (list)   KEYS[3] bucket's active index (zset)
-- KEYS[4] bucket's index of the run's status (zset)   KEYS[5] bucket's shapes (hash)
-- KEYS[6] snapshot (string)   KEYS[7] bucket's archive feed (stream)
-- KEYS[8] (only with a message) the broker's list the first task's message goes to
-- ARGV[1] run id   ARGV[2] saga name   ARGV[3] definition fingerprint   ARGV[4] its shape (JSON)
-- ARGV[5] snapshot v1   ARGV[6] saga.started, stored form   ARGV[7] '1' = append the run to the feed
-- ARGV[8] status   ARGV[9] cursor   ARGV[10] definition version
-- ARGV[11] sha256 of the start payload ('' = no start key, so no second start to compare with)
-- ARGV[12] start time, µs   ARGV[13] now, s   ARGV[14] watchdog deadline, s
-- ARGV[15] the first task's message ('' = none: the caller sends it)
-- ARGV[16] the run's deadline, s since the epoch ('' = none): begin.lua refuses forward steps past it
-- ARGV[17] the storage format the record is written in (saga/core/formats.py: STORAGE_FORMAT),
--   kept in meta.format; readers refuse a format newer than theirs (a record without it is format 1)
-- Returns 'created' | 'exists' (a run with this id and the same start payload: nothing written)
--       | 'conflict' (a run with this id was started with another payload: nothing written).
if redis.call('EXISTS', KEYS[1]) == 1 then
  local input = redis.call('HGET', KEYS[1], 'input')
  if input and input ~= ARGV[11] then return 'conflict' end
  return 'exists'
end
local fields = {'saga', ARGV[2], 'fingerprint', ARGV[3], 'version', 1, 'status', ARGV[8], 'cursor', ARGV[9],
  'sv', ARGV[10], 't0', ARGV[12], 'format', ARGV[17]}
if ARGV[11] ~= '' then fields[#fields + 1] = 'input'; fields[#fields + 1] = ARGV[11] end
if ARGV[16] ~= '' then fields[#fields + 1] = 'dl'; fields[#fields + 1] = ARGV[16] end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('SET', KEYS[6], ARGV[5])
redis.call('RPUSH', KEYS[2], ARGV[6])
redis.call('HSETNX', KEYS[5], ARGV[3], ARGV[4])
redis.call('ZADD', KEYS[4], ARGV[13], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[14], ARGV[1])
if ARGV[7] == '1' then redis.call('XADD', KEYS[7], '*', 'r', ARGV[1]) end
if ARGV[15] ~= '' then redis.call('LPUSH', KEYS[8], ARGV[15]) end
return 'created'
