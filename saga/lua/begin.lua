-- begin.lua: decide whether this delivery of a step (or compensation) may run its body, and if so
-- take the run's lease with a new fencing token. Caller: RedisStore.begin (each delivery).
-- KEYS[1] meta (hash; dedup marks are its 'd:<direction>:<index>' fields)   KEYS[2] history
-- KEYS[3] events   KEYS[4] lease (string)
-- ARGV[1] direction ('forward' | 'compensation')   ARGV[2] step index   ARGV[3] lease ms
-- ARGV[4] attempt the message carries   ARGV[5] definition fingerprint of the caller, or '' for a
--   compensation run by name for an operator's unwind (accepted only while meta.unwind = 'operator')
-- ARGV[6] started event as JSON without its closing brace ('..."attempt":N,"version":V}' is added)
-- Returns {outcome, snapshot, token, attempt, extra}:
--   run      lease taken: run the body (token fences its commit); a parked mark is cleared
--   done     this step already committed: skip (extra = '1' when no lease is live, i.e. nothing runs)
--   busy     another attempt holds a live lease: skip
--   stale    the run's cursor is elsewhere (or the run is terminal): skip (extra = status)
--   drift    the run was started under another definition (extra = the stored fingerprint)
--   missing  no such run
-- Common path: HMGET, SET NX, HSET, RPUSH, LINDEX.
local m = redis.call('HMGET', KEYS[1], 'fingerprint', 'status', 'cursor', 'version', 'fence', 'attempt',
  'd:' .. ARGV[1] .. ':' .. ARGV[2], 'unwind', 'parked')
local fp, status, cursor, version, fence, attempt, mark = m[1], m[2], m[3], m[4], m[5], m[6], m[7]
if not fp then
  return {'missing', '', '', 0, ''}
end
if mark then
  redis.call('HINCRBY', KEYS[1], 'dups', 1)
  local idle = '0'
  if redis.call('EXISTS', KEYS[4]) == 0 then idle = '1' end
  return {'done', redis.call('LINDEX', KEYS[2], -1), '', 0, idle}
end
local by_name = ARGV[5] == '' and ARGV[1] == 'compensation' and m[8] == 'operator'
if fp ~= ARGV[5] and not by_name then
  return {'drift', redis.call('LINDEX', KEYS[2], -1), '', 0, fp}
end
local here
if ARGV[1] == 'forward' then
  here = (status == 'pending' or status == 'running')
else
  here = (status == 'compensating')
end
if (not here) or cursor ~= ARGV[2] then
  return {'stale', redis.call('LINDEX', KEYS[2], -1), '', 0, status}
end
local token = tostring(tonumber(fence) + 1)
if not redis.call('SET', KEYS[4], token, 'PX', ARGV[3], 'NX') then
  -- a live lease: only the retry it was handed to ('backoff:<attempt>') may take it over
  if redis.call('GET', KEYS[4]) ~= ('backoff:' .. ARGV[4]) then
    redis.call('HINCRBY', KEYS[1], 'dups', 1)
    return {'busy', redis.call('LINDEX', KEYS[2], -1), '', 0, ''}
  end
  redis.call('SET', KEYS[4], token, 'PX', ARGV[3])
end
attempt = tonumber(attempt) + 1
redis.call('HSET', KEYS[1], 'fence', token, 'attempt', attempt)
if m[9] then redis.call('HDEL', KEYS[1], 'parked') end
redis.call('RPUSH', KEYS[3], ARGV[6] .. ',"attempt":' .. attempt .. ',"version":' .. version .. '}')
return {'run', redis.call('LINDEX', KEYS[2], -1), token, attempt, status}
