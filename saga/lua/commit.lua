-- commit.lua: commit one transition atomically: new snapshot, its events, the dedup mark and any
-- dead-letter entry, guarded by a compare-and-set on the version and by the attempt's fence.
-- Caller: RedisStore.commit (every transition).
-- KEYS[1] meta   KEYS[2] history   KEYS[3] events   KEYS[4] lease   KEYS[5] dead (list)
-- ARGV[1] expected version   ARGV[2] fencing token ('' = none)   ARGV[3] new version
-- ARGV[4] new snapshot   ARGV[5] new status   ARGV[6] new cursor
-- ARGV[7] dedup mark field ('' = none)   ARGV[8] flags: 'r' release the lease, 'a' reset the attempt
--   count, 'i' refuse while an attempt holds a live lease (a backoff hold does not count),
--   'u' an operator unwinds the run (compensations may then run by name; a parked mark is cleared)
-- ARGV[9] retention ms (0 = keep)   ARGV[10] dead-letter entry ('' = none)   ARGV[11..] events
-- Fencing: the lease is only ever set by begin.lua under a new fence (or handed to a retry by its
-- holder), so the token still holds the run exactly when it is still the run's fence.
-- Returns {1,'ok',cancel} | {1,'again',cancel} (this very commit was applied before) | {0, reason}:
-- cancel is the reason an operator gave to cancel the run while this attempt ran, or ''.
-- Common path: HMGET, HSET, RPUSH, RPUSH, DEL.
local dfield = ARGV[7]
if dfield == '' then dfield = 'version' end
local m = redis.call('HMGET', KEYS[1], 'version', 'fence', 'cancel', dfield)
local v, fence, cancel, prev = m[1], m[2], m[3] or '', m[4]
if not v then return {0, 'missing'} end
local mark = ARGV[3] .. ':' .. ARGV[2]
if ARGV[7] ~= '' and prev then
  if prev == mark then return {1, 'again', cancel} end
  return {0, 'done'}
end
if v ~= ARGV[1] then return {0, 'version'} end
if ARGV[2] ~= '' and fence ~= ARGV[2] then return {0, 'fenced'} end
if string.find(ARGV[8], 'i', 1, true) then
  local lease = redis.call('GET', KEYS[4])
  if lease and string.sub(lease, 1, 8) ~= 'backoff:' then return {0, 'leased'} end
end
local fields = {'version', ARGV[3], 'status', ARGV[5], 'cursor', ARGV[6]}
if string.find(ARGV[8], 'a', 1, true) then
  fields[#fields + 1] = 'attempt'; fields[#fields + 1] = 0
end
if ARGV[7] ~= '' then
  fields[#fields + 1] = ARGV[7]; fields[#fields + 1] = mark
end
if string.find(ARGV[8], 'u', 1, true) then
  fields[#fields + 1] = 'unwind'; fields[#fields + 1] = 'operator'
  redis.call('HDEL', KEYS[1], 'parked')
end
redis.call('HSET', KEYS[1], unpack(fields))
if cancel ~= '' and ARGV[5] ~= 'running' and ARGV[5] ~= 'pending' then redis.call('HDEL', KEYS[1], 'cancel') end
redis.call('RPUSH', KEYS[2], ARGV[4])
if #ARGV >= 11 then redis.call('RPUSH', KEYS[3], unpack(ARGV, 11)) end
if ARGV[10] ~= '' then redis.call('RPUSH', KEYS[5], ARGV[10]) end
if string.find(ARGV[8], 'r', 1, true) then redis.call('DEL', KEYS[4]) end
local ttl = tonumber(ARGV[9])
if ttl > 0 then
  for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ttl) end
  if ARGV[10] ~= '' or redis.call('EXISTS', KEYS[5]) == 1 then redis.call('PEXPIRE', KEYS[5], ttl) end
end
return {1, 'ok', cancel}
