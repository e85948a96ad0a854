-- create.lua: write a new run, or do nothing if a run with this id exists (start-key dedup).
-- KEYS[1] meta (hash)   KEYS[2] history (list of snapshots)   KEYS[3] events (list)
-- ARGV[1] saga name   ARGV[2] definition fingerprint   ARGV[3] snapshot v1   ARGV[4] saga.started event
-- ARGV[5] start key ('' if none)   ARGV[6] status   ARGV[7] cursor
-- Returns 1 when the run was created, 0 when it already existed.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('HSET', KEYS[1], 'saga', ARGV[1], 'fingerprint', ARGV[2], 'version', 1, 'fence', 0,
  'attempt', 0, 'dups', 0, 'key', ARGV[5], 'status', ARGV[6], 'cursor', ARGV[7])
redis.call('RPUSH', KEYS[2], ARGV[3])
redis.call('RPUSH', KEYS[3], ARGV[4])
return 1
