-- fence.lua (prepended to scripts that write on behalf of an attempt): is TOKEN still the holder?
-- A live lease must carry the token; an expired lease counts only if nobody began since.
local function holds(meta, lease_key, token)
  if token == '' then return true end
  local lease = redis.call('GET', lease_key)
  if lease then return lease == token end
  return redis.call('HGET', meta, 'fence') == token
end
