-- admit: ARGV[3] count. An operator admits the next N now (bounded by max_active), drawing
-- first if the room is past opens_at and not drawn yet.
-- Reply: {'ok', until, "ticket,ticket,..."}
local c = load_cfg()
if not c then return { 'no_room' } end
local now, us = clock()
if c.method == 'random_at_open' and c.opens > 0 and now >= c.opens
    and redis.call('EXISTS', K_DRAW) == 0 then
  do_draw(c, now, us)
end
local n = math.min(tonumber(ARGV[3]), capacity(c, now))
local tickets, untl = admit_next(n, now, c)
update_rate(now, #tickets, c)
publish_admitted(tickets, untl, 'null')
return { 'ok', untl, table.concat(tickets, ',') }
