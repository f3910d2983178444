-- Turns an owner's holds into sales, all or none. A hold past its expiry still sells if
-- nobody took the seat since; a seat already sold to the same owner is fine (retries).
-- KEYS: 1 holds; ARGV: 1 owner, 2.. seat ids. Returns {'sold'} | {'lost', seat...}
local lost = {'lost'}
for i = 2, #ARGV do
  local v = redis.call('HGET', KEYS[1], ARGV[i])
  local owner = v and string.match(v, '^%u|([^|]*)|')
  if owner ~= ARGV[1] then lost[#lost + 1] = ARGV[i] end
end
if #lost > 1 then return lost end
for i = 2, #ARGV do
  redis.call('HSET', KEYS[1], ARGV[i], 'S|' .. ARGV[1] .. '|0')
end
return {'sold'}
