-- leave: ARGV[3] ticket id. Returns the state before; ended tickets stay as they are.
local c = load_cfg()
if not c then return { 'no_room' } end
local now = clock()
local t = ARGV[3]
local st = ticket_status(t, now, c)
if not st then return { 'no_ticket' } end
if st[1] == 'waiting' then
  redis.call('ZREM', K_WAIT, t)
  redis.call('ZREM', K_SEEN, t)
  ranks_moved()
  -- Everyone behind it moved up: gateways push the new positions to their streams.
  redis.call('PUBLISH', CHANNEL, '{"type":"left","room":"' .. ROOM .. '"}')
elseif st[1] == 'admitted' then
  -- Its batch is still live (its end is in the future): give the place back now, and end
  -- its token too, or the place would be used twice.
  redis.call('HINCRBY', K_BATCHN, st[6], -1)
  redis.call('HINCRBY', K_STATS, 'active', -1)
  redis.call('ZADD', K_REVOKED, st[3], t)
else
  return { 'ok', st[1] }
end
redis.call('HSET', K_GONE, t, 'l')
redis.call('HINCRBY', K_STATS, 'left', 1)
return { 'ok', st[1] }
