-- Holds seats of one schedule for one reservation, all or none (the backend's booking).
-- KEYS: 1 holds (HASH seat -> "H|owner|expires_ms" held, "S|owner|0" sold)
-- ARGV: 1 owner (reservation id), 2 ttl ms, 3.. seat ids
-- A hold past its expiry counts as free (expired holds are swept by a batch job).
-- Returns {'held', expires_ms} | {'taken', seat...}
local K = KEYS[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local taken = {'taken'}
for i = 3, #ARGV do
  local v = redis.call('HGET', K, ARGV[i])
  if v then
    local kind, owner, exp = string.match(v, '^(%u)|([^|]*)|(%d+)$')
    if kind == 'S' or (owner ~= ARGV[1] and tonumber(exp) > now) then
      taken[#taken + 1] = ARGV[i]
    end
  end
end
if #taken > 1 then return taken end
local exp = now + tonumber(ARGV[2])
for i = 3, #ARGV do
  redis.call('HSET', K, ARGV[i], 'H|' .. ARGV[1] .. '|' .. exp)
end
return {'held', exp}
