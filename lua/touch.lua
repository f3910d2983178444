-- touch: ARGV[3..] ticket ids seen now. XX: only tickets still waiting are updated.
if redis.call('EXISTS', K_CFG) == 0 then return { 'no_room' } end
local _, _, now_s = clock()
mark_seen(ARGV, 3, now_s)
return { 'ok' }
