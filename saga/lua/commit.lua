-- commit.lua: commit one transition atomically: new snapshot, its events, the dedup mark and any
-- dead-letter entry, guarded by a compare-and-set on the version and by the attempt's fence.
-- KEYS[1] meta   KEYS[2] history   KEYS[3] events   KEYS[4] done   KEYS[5] lease   KEYS[6] dead (list)
-- ARGV[1] expected version   ARGV[2] fencing token ('' = none)   ARGV[3] new version
-- ARGV[4] new snapshot   ARGV[5] new status   ARGV[6] new cursor
-- ARGV[7] dedup field ('' = none)   ARGV[8] flags: 'r' release the lease, 'a' reset the attempt count,
--   'i' refuse while an attempt holds a live lease (a backoff hold does not count)
-- ARGV[9] retention ms (0 = keep)   ARGV[10] dead-letter entry ('' = none)   ARGV[11..] events
-- Returns {1,'ok',cancel} | {1,'again',cancel} (this very commit was applied before) | {0, reason}:
-- cancel is the reason an operator gave to cancel the run while this attempt ran, or ''.
local v = redis.call('HGET', KEYS[1], 'version')
if not v then return {0, 'missing'} end
local mark = ARGV[3] .. ':' .. ARGV[2]
if ARGV[7] ~= '' then
  local prev = redis.call('HGET', KEYS[4], ARGV[7])
  if prev then
    if prev == mark then return {1, 'again', redis.call('HGET', KEYS[1], 'cancel') or ''} end
    return {0, 'done'}
  end
end
if v ~= ARGV[1] then return {0, 'version'} end
if not holds(KEYS[1], KEYS[5], ARGV[2]) then return {0, 'fenced'} end
if string.find(ARGV[8], 'i', 1, true) then
  local lease = redis.call('GET', KEYS[5])
  if lease and string.sub(lease, 1, 8) ~= 'backoff:' then return {0, 'leased'} end
end
redis.call('HSET', KEYS[1], 'version', ARGV[3], 'status', ARGV[5], 'cursor', ARGV[6])
if string.find(ARGV[8], 'a', 1, true) then redis.call('HSET', KEYS[1], 'attempt', 0) end
if ARGV[5] ~= 'running' and ARGV[5] ~= 'pending' then redis.call('HDEL', KEYS[1], 'cancel') end
redis.call('RPUSH', KEYS[2], ARGV[4])
for i = 11, #ARGV do redis.call('RPUSH', KEYS[3], ARGV[i]) end
if ARGV[7] ~= '' then redis.call('HSET', KEYS[4], ARGV[7], mark) end
if ARGV[10] ~= '' then redis.call('RPUSH', KEYS[6], ARGV[10]) end
if string.find(ARGV[8], 'r', 1, true) then redis.call('DEL', KEYS[5]) end
local ttl = tonumber(ARGV[9])
if ttl > 0 then
  for i = 1, 6 do redis.call('PEXPIRE', KEYS[i], ttl) end
end
return {1, 'ok', redis.call('HGET', KEYS[1], 'cancel') or ''}
