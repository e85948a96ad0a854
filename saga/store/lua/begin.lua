-- begin.lua: decide whether this delivery of a step (or compensation) may run its body, and if so
-- take the run's lease with a new fencing token. Caller: RedisStore.begin (each delivery).
-- KEYS[1] meta (hash; dedup marks are its 'd:<direction>:<index>' fields)   KEYS[2] events
-- KEYS[3] lease (string)   KEYS[4] bucket's active index (zset)   KEYS[5] snapshot (string)
-- ARGV[1] direction ('forward' | 'compensation')   ARGV[2] step index   ARGV[3] lease ms
-- ARGV[4] attempt the message carries   ARGV[5] definition fingerprint of the caller, or '' for a
--   compensation run by name for an operator's unwind (accepted only while meta.unwind = 'operator')
-- ARGV[6] code of the started event (saga/core/codec.py)   ARGV[7] now, µs   ARGV[8] watchdog deadline, s
-- ARGV[9] run id   ARGV[10] lane ('' for a step that runs alone; '<f|c><index>' for a member of
--   a parallel group, which has its own lease key, fence field 'fence:<lane>' and attempt count
--   'attempt:<lane>'; its token still comes from the run's fence counter, so tokens are unique)
-- ARGV[11] the cursor this step runs at (its own index; a group's first member for a member)
-- ARGV[12] the newest storage format the caller reads (saga/core/formats.py: STORAGE_FORMAT)
-- Returns {outcome, snapshot, token, attempt, extra}; the snapshot comes with run, done and drift
-- (a completed or compensated run has none):
--   run      lease taken: run the body (token fences its commit); a parked mark is cleared; the
--            started event is appended; the run is due to the watchdog a lease from now at the
--            latest (an earlier deadline, e.g. the one its last commit set, stands: a live lease
--            only makes the watchdog look again when it lapses)
--   done     this step already committed: skip (extra = '1' when no lease is live, i.e. nothing runs)
--   busy     another attempt holds a live lease: skip
--   stale    the run's cursor is elsewhere (or the run is finished): skip (extra = status)
--   drift    the run was started under another definition (extra = the stored fingerprint)
--   expired  a forward step of a run whose deadline (meta.dl) has passed: nothing new starts
--   missing  no such run
--   format   the run's record names a storage format newer than ARGV[12] (extra = meta.format):
--            nothing is written (a record without meta.format is format 1)
-- done, busy and stale count the delivery in meta.dups (deliveries that found nothing to do).
-- Common path: HMGET, SET NX, HSET, RPUSH, ZADD, GET.
local lane = ARGV[10]
local attempt_field = 'attempt'
if lane ~= '' then attempt_field = 'attempt:' .. lane end
local m = redis.call('HMGET', KEYS[1], 'fingerprint', 'status', 'cursor', 'fence', attempt_field,
  'd:' .. ARGV[1] .. ':' .. ARGV[2], 'unwind', 'parked', 't0', 'dl', 'format')
local fp, status, cursor = m[1], m[2], m[3]
if not fp then
  return {'missing', '', '', 0, ''}
end
if m[11] and not ((tonumber(m[11]) or math.huge) <= tonumber(ARGV[12])) then
  return {'format', '', '', 0, m[11]}
end
local function snapshot() return redis.call('GET', KEYS[5]) or '' end
if m[6] then
  redis.call('HINCRBY', KEYS[1], 'dups', 1)
  local idle = '0'
  if redis.call('EXISTS', KEYS[3]) == 0 then idle = '1' end
  return {'done', snapshot(), '', 0, idle}
end
local by_name = ARGV[5] == '' and ARGV[1] == 'compensation' and m[7] == 'operator'
if fp ~= ARGV[5] and not by_name then
  return {'drift', snapshot(), '', 0, fp}
end
local here
if ARGV[1] == 'forward' then
  here = (status == 'pending' or status == 'running')
else
  here = (status == 'compensating')
end
if (not here) or cursor ~= ARGV[11] then
  redis.call('HINCRBY', KEYS[1], 'dups', 1)
  return {'stale', '', '', 0, status}
end
if ARGV[1] == 'forward' and m[10] and tonumber(m[10]) * 1000000 <= tonumber(ARGV[7]) then
  return {'expired', snapshot(), '', 0, ''}
end
local token = tostring(tonumber(m[4] or '0') + 1)
if not redis.call('SET', KEYS[3], token, 'PX', ARGV[3], 'NX') then
  -- a live lease: only the retry it was handed to ('backoff:<attempt>') may take it over
  if redis.call('GET', KEYS[3]) ~= ('backoff:' .. ARGV[4]) then
    redis.call('HINCRBY', KEYS[1], 'dups', 1)
    return {'busy', '', '', 0, ''}
  end
  redis.call('SET', KEYS[3], token, 'PX', ARGV[3])
end
local attempt = tonumber(m[5] or '0') + 1
if lane == '' then
  redis.call('HSET', KEYS[1], 'fence', token, 'attempt', attempt)
else
  redis.call('HSET', KEYS[1], 'fence', token, 'fence:' .. lane, token, attempt_field, attempt)
end
if m[8] then redis.call('HDEL', KEYS[1], 'parked') end
local at = tonumber(ARGV[7]) - tonumber(m[9])
local row = '[' .. ARGV[6] .. ',' .. string.format('%d', at) .. ',' .. ARGV[2]
if attempt ~= 1 then row = row .. ',' .. attempt end  -- attempt 1 is left out (saga/core/codec.py)
redis.call('RPUSH', KEYS[2], row .. ']')
redis.call('ZADD', KEYS[4], 'XX', 'LT', ARGV[8], ARGV[9])
return {'run', snapshot(), token, attempt, status}
