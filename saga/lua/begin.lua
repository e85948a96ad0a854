-- begin.lua: decide whether this delivery of a step (or compensation) may run its body, and if so
-- take the run's lease with a new fencing token.
-- KEYS[1] meta   KEYS[2] history   KEYS[3] events   KEYS[4] done (hash)   KEYS[5] lease (string)
-- ARGV[1] direction ('forward' | 'compensation')   ARGV[2] step index   ARGV[3] lease ms
-- ARGV[4] attempt the message carries   ARGV[5] definition fingerprint of the caller
-- ARGV[6] started event as JSON without its closing brace ('..."attempt":N,"version":V}' is added)
-- Returns {outcome, snapshot, token, attempt, extra}:
--   run      lease taken: run the body (token fences its commit)
--   done     this step already committed: skip (extra = '1' when no lease is live, i.e. nothing runs)
--   busy     another attempt holds a live lease: skip
--   stale    the run's cursor is elsewhere (or the run is terminal): skip
--   drift    the run was started under another definition (extra = the stored fingerprint)
--   missing  no such run
local meta = KEYS[1]
if redis.call('EXISTS', meta) == 0 then
  return {'missing', '', '', 0, ''}
end
local snap = redis.call('LINDEX', KEYS[2], -1)
local field = ARGV[1] .. ':' .. ARGV[2]
local lease = redis.call('GET', KEYS[5])
if redis.call('HEXISTS', KEYS[4], field) == 1 then
  redis.call('HINCRBY', meta, 'dups', 1)
  local idle = '0'
  if not lease then idle = '1' end
  return {'done', snap, '', 0, idle}
end
local fp = redis.call('HGET', meta, 'fingerprint')
if fp ~= ARGV[5] then
  return {'drift', snap, '', 0, fp}
end
local status = redis.call('HGET', meta, 'status')
local cursor = redis.call('HGET', meta, 'cursor')
local here
if ARGV[1] == 'forward' then
  here = (status == 'pending' or status == 'running')
else
  here = (status == 'compensating')
end
if (not here) or cursor ~= ARGV[2] then
  return {'stale', snap, '', 0, status}
end
if lease and lease ~= ('backoff:' .. ARGV[4]) then
  redis.call('HINCRBY', meta, 'dups', 1)
  return {'busy', snap, '', 0, ''}
end
local token = redis.call('HINCRBY', meta, 'fence', 1)
local attempt = redis.call('HINCRBY', meta, 'attempt', 1)
redis.call('SET', KEYS[5], token, 'PX', ARGV[3])
if status ~= 'pending' then
  -- the first start of a pending run is a new version, committed by the caller instead
  local version = redis.call('HGET', meta, 'version')
  redis.call('RPUSH', KEYS[3], ARGV[6] .. ',"attempt":' .. attempt .. ',"version":' .. version .. '}')
end
return {'run', snap, tostring(token), attempt, status}
