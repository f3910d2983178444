-- watch: ARGV[3..] tickets with open live streams. Marks the waiting ones seen now and returns
-- {'ok', now, state, position, until, state, position, until, ...} in argument order
-- (state 'unknown' for ids the room does not have).
local c = load_cfg()
if not c then return { 'no_room' } end
local now, _, now_s = clock()
local reply = { 'ok', now_s }
local seen = {}
for i = 3, #ARGV do
  local t = ARGV[i]
  local st = ticket_status(t, now, c)
  if not st then
    reply[#reply + 1], reply[#reply + 2], reply[#reply + 3] = 'unknown', -1, '0'
  else
    reply[#reply + 1], reply[#reply + 2], reply[#reply + 3] = st[1], st[2], st[3]
    if st[1] == 'waiting' then seen[#seen + 1] = t end
  end
end
mark_seen(seen, 1, now_s)
return reply
