-- archived.lua: a finished run was copied to the SQL archive; let its keys expire after the hot
-- retention — only if it is still exactly the run that was copied (same version, same number of
-- events) and completed or compensated, so nothing leaves Redis before the archive holds it. Its
-- entry in its bucket's status index goes at once: with an archive, listings read the archive.
-- Caller: ArchiveFeed.expire_archived (the archiver, after its SQL commit).
-- KEYS[1] meta   KEYS[2] events   KEYS[3] bucket's completed index   KEYS[4] ... compensated index
-- ARGV[1] archived version   ARGV[2] archived event count   ARGV[3] hot retention ms   ARGV[4] run id
-- Returns 1 when the keys now expire, 0 when the run moved, is unfinished or is gone.
local m = redis.call('HMGET', KEYS[1], 'version', 'status')
if not m[1] or m[1] ~= ARGV[1] then return 0 end
if m[2] ~= 'completed' and m[2] ~= 'compensated' then return 0 end
if redis.call('LLEN', KEYS[2]) ~= tonumber(ARGV[2]) then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
if m[2] == 'completed' then redis.call('ZREM', KEYS[3], ARGV[4]) else redis.call('ZREM', KEYS[4], ARGV[4]) end
return 1
