-- status: ARGV[3] ticket id.
local c = load_cfg()
if not c then return { 'no_room' } end
local now = clock()
local st = ticket_status(ARGV[3], now, c)
if not st then return { 'no_ticket' } end
return status_reply(ARGV[3], 0, st, now, c)
