-- Frees an owner's seats, held or sold (refunds and compensations); never another's.
-- KEYS: 1 holds; ARGV: 1 owner, 2.. seat ids. Returns how many seats were freed.
local n = 0
for i = 2, #ARGV do
  local v = redis.call('HGET', KEYS[1], ARGV[i])
  if v and string.match(v, '^%u|([^|]*)|') == ARGV[1] then
    redis.call('HDEL', KEYS[1], ARGV[i])
    n = n + 1
  end
end
return n
