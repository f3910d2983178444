-- Removes holds past their expiry from one schedule; returns how many.
-- KEYS: 1 holds
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local all = redis.call('HGETALL', KEYS[1])
local n = 0
for i = 1, #all, 2 do
  local kind, exp = string.match(all[i + 1], '^(%u)|[^|]*|(%d+)$')
  if kind == 'H' and tonumber(exp) <= now then
    redis.call('HDEL', KEYS[1], all[i])
    n = n + 1
  end
end
return n
