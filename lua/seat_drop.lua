-- Drops an owner's seats: holds only (a release), or holds and sales too (a refund or a
-- compensation); never someone else's.
-- KEYS: 1 holds; ARGV: 1 owner, 2 '1' when sales go too, 3.. seat ids. Returns how many went.
local kinds = ARGV[2] == '1' and '^[HS]|([^|]*)|' or '^H|([^|]*)|'
local n = 0
for i = 3, #ARGV do
  local v = redis.call('HGET', KEYS[1], ARGV[i])
  if v and string.match(v, kinds) == ARGV[1] then
    redis.call('HDEL', KEYS[1], ARGV[i])
    n = n + 1
  end
end
return n
