-- status: ARGV[3..] ticket ids (one poll, or many coalesced by a gateway). Returns the room's
-- view once, then each ticket in argument order:
-- {'ok', now, rate_pm, batch, interval, opens, paused, max_active, ttl,
--  state, position, until, owner, joined, ...} (state 'unknown' for ids the room does not have).
local c = load_cfg()
if not c then return { 'no_room' } end
local now, _, now_s = clock()
local reply = { 'ok', now_s, redis.call('HGET', K_STATS, 'rate_pm') or '0', c.batch,
  c.interval, c.opens, c.paused and 1 or 0, c.max_active, c.ttl }
for i = 3, #ARGV do
  local st = ticket_status(ARGV[i], now, c)
  local n = #reply
  if st then
    reply[n + 1], reply[n + 2], reply[n + 3], reply[n + 4], reply[n + 5] =
      st[1], st[2], st[3], st[4], st[5]
  else
    reply[n + 1], reply[n + 2], reply[n + 3], reply[n + 4], reply[n + 5] = 'unknown', -1, '0', '', '0'
  end
end
return reply
