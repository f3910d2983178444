-- stats: counters and gauges of the room, on the store's clock.
local c = load_cfg()
if not c then return { 'no_room' } end
local now, _, now_s = clock()
-- Joins are counted by the join sequence itself (one INCR per new ticket), not twice.
local joined = tonumber(redis.call('GET', K_SEQ) or '0')
return { 'ok', phase(c, now), redis.call('ZCARD', K_WAIT), active_count(now),
  redis.call('HGET', K_STATS, 'rate_pm') or '0', c.opens, joined, stat('admitted'),
  stat('dropped'), stat('left'), stat('free_used'), stat('last_tick'), now_s }
