-- commit.lua: commit one transition atomically — the run's new snapshot, its events, the step's
-- dedup mark, any dead-letter entry, and the run's place in its bucket's indexes — guarded by a
-- compare-and-set on the version and by the attempt's fence. A refused commit writes nothing at
-- all, indexes included. Caller: RedisStore.commit (every transition).
-- KEYS[1] meta   KEYS[2] events   KEYS[3] lease   KEYS[4] bucket's active index
-- KEYS[5] bucket's index of the status the run leaves   KEYS[6] ... of the status it enters
-- KEYS[7] bucket's dead-letter entries (hash)   KEYS[8] bucket's dead-letter order (zset)
-- KEYS[9] snapshot (string)   KEYS[10] bucket's archive feed (stream)
-- KEYS[11] the broker's list the next task's message goes to (without a message: any key of
--   the run, unused)   KEYS[12..] leases of the parallel group's lanes that 'i' checks and 'k' ends
-- ARGV[1] expected version   ARGV[2] fencing token ('' = none)   ARGV[3] new version
-- ARGV[4] new snapshot ('' = drop it: the run completed or was compensated, its events are its
--   record)   ARGV[5] new status   ARGV[6] new cursor   ARGV[7] dedup mark field ('' = none)
-- ARGV[8] flags: 'r' release the lease, 'a' reset the attempt count, 'i' refuse while an attempt
--   holds a live lease (a backoff hold does not count), 'u' an operator unwinds the run
--   (compensations may then run by name; a parked mark is cleared), 'f' the run finished: drop
--   the bookkeeping only a moving run needs, 'x' append the run to the archive feed, 'k' fence
--   every attempt (the run's fence moves on, every lane's fence is dropped, every lease in KEYS
--   ends: nothing running now can commit), 'g' the cursor leaves a parallel group: drop
--   its lanes' fence and attempt fields (no member of it may commit any more)
-- ARGV[9] retention ms (0 = keep)   ARGV[10] dead-letter entry ('' = none)   ARGV[11] its id
-- ARGV[12] now, s   ARGV[13] watchdog deadline, s ('' = off the list)   ARGV[14] run id
-- ARGV[15] the next task's message ('' = none; pushed unless the run goes on running while an
--   operator asked to cancel it: the caller then cancels instead)
-- ARGV[16] the committing attempt's lane ('' = none; see begin.lua: its token is checked against
--   'fence:<lane>')   ARGV[17] the channel told the run id when 'p' (PUBLISH) or 's' (SPUBLISH,
--   a cluster's sharded channel) is set: the run became terminal   ARGV[18..] events, stored form
-- Fencing: the lease is only ever set by begin.lua under a new fence (or handed to a retry by its
-- holder), so the token still holds the run exactly when it is still the run's fence.
-- Returns {1,'ok',cancel} | {1,'again',cancel} (this very commit was applied before) | {0, reason}:
-- cancel is the reason an operator gave to cancel the run while this attempt ran, or ''.
-- A step's commit: HMGET, HSET, SET, RPUSH, ZADD, DEL, and LPUSH of the next message.
local dfield = ARGV[7]
if dfield == '' then dfield = 'version' end
local fence_field = 'fence'
if ARGV[16] ~= '' then fence_field = 'fence:' .. ARGV[16] end
local m = redis.call('HMGET', KEYS[1], 'version', fence_field, 'cancel', dfield)
local v, fence, cancel, prev = m[1], m[2] or '0', m[3] or '', m[4]
if not v then return {0, 'missing'} end
local mark = ARGV[3] .. ':' .. ARGV[2]
if ARGV[7] ~= '' and prev then
  if prev == mark then return {1, 'again', cancel} end
  return {0, 'done'}
end
if v ~= ARGV[1] then return {0, 'version'} end
if ARGV[2] ~= '' and fence ~= ARGV[2] then return {0, 'fenced'} end
local flags = ARGV[8]
local function flag(f) return string.find(flags, f, 1, true) ~= nil end
local leases = {KEYS[3]}
for i = 12, #KEYS do leases[#leases + 1] = KEYS[i] end
if flag('i') then
  for _, key in ipairs(leases) do
    local lease = redis.call('GET', key)
    if lease and string.sub(lease, 1, 8) ~= 'backoff:' then return {0, 'leased'} end
  end
end
local fields = {'version', ARGV[3], 'status', ARGV[5], 'cursor', ARGV[6]}
local function set(field, value) fields[#fields + 1] = field; fields[#fields + 1] = value end
if flag('a') then set('attempt', 0) end
if ARGV[7] ~= '' then set(ARGV[7], mark) end
if flag('u') then
  set('unwind', 'operator')
  redis.call('HDEL', KEYS[1], 'parked')
end
redis.call('HSET', KEYS[1], unpack(fields))
if ARGV[4] ~= '' then redis.call('SET', KEYS[9], ARGV[4]) else redis.call('DEL', KEYS[9]) end
local function lane_field(field)
  return string.sub(field, 1, 6) == 'fence:' or string.sub(field, 1, 8) == 'attempt:'
end
if flag('k') then
  redis.call('HINCRBY', KEYS[1], 'fence', 1)
  for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
    if string.sub(field, 1, 6) == 'fence:' then redis.call('HDEL', KEYS[1], field) end
  end
  redis.call('DEL', unpack(leases))
end
if flag('f') then
  local gone = {'fence', 'attempt', 'cursor', 'cancel', 'unwind', 'parked'}
  for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
    if (string.sub(field, 1, 2) == 'd:' and field ~= ARGV[7]) or lane_field(field) then gone[#gone + 1] = field end
  end
  redis.call('HDEL', KEYS[1], unpack(gone))
else
  if cancel ~= '' and ARGV[5] ~= 'running' and ARGV[5] ~= 'pending' then redis.call('HDEL', KEYS[1], 'cancel') end
  if flag('g') then
    for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
      if lane_field(field) then redis.call('HDEL', KEYS[1], field) end
    end
  end
end
if #ARGV >= 18 then redis.call('RPUSH', KEYS[2], unpack(ARGV, 18)) end
if KEYS[5] ~= KEYS[6] then
  redis.call('ZREM', KEYS[5], ARGV[14])
  redis.call('ZADD', KEYS[6], ARGV[12], ARGV[14])
end
if ARGV[13] == '' then
  redis.call('ZREM', KEYS[4], ARGV[14])
else
  redis.call('ZADD', KEYS[4], ARGV[13], ARGV[14])
end
if ARGV[10] ~= '' then
  redis.call('HSET', KEYS[7], ARGV[11], ARGV[10])
  redis.call('ZADD', KEYS[8], ARGV[12], ARGV[11])
end
if flag('r') then redis.call('DEL', KEYS[3]) end
if ARGV[15] ~= '' and (cancel == '' or ARGV[5] ~= 'running') then redis.call('LPUSH', KEYS[11], ARGV[15]) end
if flag('x') then redis.call('XADD', KEYS[10], '*', 'r', ARGV[14]) end
if flag('p') then redis.call('PUBLISH', ARGV[17], ARGV[14]) end
if flag('s') then redis.call('SPUBLISH', ARGV[17], ARGV[14]) end
local ttl = tonumber(ARGV[9])
if ttl > 0 then
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('PEXPIRE', KEYS[2], ttl)
end
return {1, 'ok', cancel}
