-- create.lua: write a new run, or report the run that already has this id (start-key dedup).
-- Caller: RedisStore.create (start() of a run).
-- KEYS[1] meta (hash)   KEYS[2] history (list of snapshots)   KEYS[3] events (list)
-- ARGV[1] saga name   ARGV[2] definition fingerprint   ARGV[3] snapshot v1   ARGV[4] saga.started event
-- ARGV[5] start key ('' if none)   ARGV[6] status   ARGV[7] cursor   ARGV[8] definition version
-- ARGV[9] the definition's shape (JSON)   ARGV[10] sha256 of the start payload
-- Returns 'created' | 'exists' (a run with this id and the same start payload: nothing written)
--       | 'conflict' (a run with this id was started with another payload: nothing written).
if redis.call('EXISTS', KEYS[1]) == 1 then
  local input = redis.call('HGET', KEYS[1], 'input')
  if input and input ~= ARGV[10] then return 'conflict' end
  return 'exists'
end
redis.call('HSET', KEYS[1], 'saga', ARGV[1], 'fingerprint', ARGV[2], 'version', 1, 'fence', 0,
  'attempt', 0, 'dups', 0, 'key', ARGV[5], 'status', ARGV[6], 'cursor', ARGV[7], 'sv', ARGV[8],
  'shape', ARGV[9], 'input', ARGV[10])
redis.call('RPUSH', KEYS[2], ARGV[3])
redis.call('RPUSH', KEYS[3], ARGV[4])
return 'created'
