-- tick: applies tick floor(now / interval) once, however many gateways call it.
-- Reply: {'ok', tick, waiting_before, active_before, dropped, expired, until,
--         draw_seed, draw_at_us, draw_last_seq, draw_shuffled, "ticket,ticket,..."}
--     or {'dup', tick}.
local c = load_cfg()
if not c then return { 'no_room' } end
local now, us = clock()
local tick = math.floor(now / c.interval)
if tick <= stat('last_tick') then return { 'dup', tostring(tick) } end
redis.call('HSET', K_STATS, 'last_tick', string.format('%d', tick))

local expired = sweep_expired(now)
-- Tokens of left tickets that have ended anyway need no refusing.
redis.call('ZREMRANGEBYSCORE', K_REVOKED, '-inf', now)

local idle = redis.call('ZRANGEBYSCORE', K_SEEN, '-inf', now - c.idle * 1000, 'LIMIT', 0, MAX_SWEEP)
for _, t in ipairs(idle) do redis.call('HSET', K_GONE, t, 'd') end
chunked(idle, function(i, j)
  redis.call('ZREM', K_WAIT, unpack(idle, i, j))
  redis.call('ZREM', K_SEEN, unpack(idle, i, j))
end)
redis.call('HINCRBY', K_STATS, 'dropped', #idle)
if #idle > 0 then ranks_moved() end

local waiting_before = redis.call('ZCARD', K_WAIT)
local active_before = active_count(now)
local reply = { 'ok', string.format('%d', tick), waiting_before, active_before, #idle, expired, '0',
  '', '0', 0, 0, '' }
if phase(c, now) ~= 'open' then return reply end
if c.method == 'random_at_open' and c.opens > 0 and redis.call('EXISTS', K_DRAW) == 0 then
  local d = do_draw(c, now, us)
  reply[8], reply[9], reply[10], reply[11] = d[1], d[2], d[3], d[4]
end
local n = math.min(c.batch, capacity(c, now))
local tickets, untl = admit_next(n, now, c)
reply[7] = untl
update_rate(now, #tickets, c)
publish_admitted(tickets, untl, string.format('%d', tick))
reply[12] = table.concat(tickets, ',')
return reply
