-- Releases an owner's holds (never a sale, never someone else's hold).
-- KEYS: 1 holds; ARGV: 1 owner, 2.. seat ids. Returns how many seats were released.
local n = 0
for i = 2, #ARGV do
  local v = redis.call('HGET', KEYS[1], ARGV[i])
  if v and string.match(v, '^H|([^|]*)|') == ARGV[1] then
    redis.call('HDEL', KEYS[1], ARGV[i])
    n = n + 1
  end
end
return n
