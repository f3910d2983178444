-- touch: ARGV[3..] ticket ids seen now. XX: only tickets still waiting are updated.
if redis.call('EXISTS', K_CFG) == 0 then return { 'no_room' } end
local now = clock()
local tickets = {}
for i = 3, #ARGV do tickets[#tickets + 1] = ARGV[i] end
mark_seen(tickets, now)
return { 'ok' }
