-- put_room: ARGV[3..] field/value pairs of the whole config. Returns 1 when the room is new.
local created = redis.call('EXISTS', K_CFG) == 0 and 1 or 0
local args = {}
for i = 3, #ARGV do args[#args + 1] = ARGV[i] end
redis.call('HSET', K_CFG, unpack(args))
if created == 1 then
  -- Ranks are versioned from a start of this room's own (stats.ver, lib.lua), so a rank a
  -- gateway read in an earlier room of the same name never matches one of this room.
  local t = redis.call('TIME')
  local start = tonumber(string.sub(redis.sha1hex(ROOM .. ':' .. t[1] .. ':' .. t[2]), 1, 13), 16)
  redis.call('HSET', K_STATS, 'ver', string.format('%d', start))
end
redis.call('PUBLISH', CHANNEL, cjson.encode({ type = 'config_changed', room = ROOM }))
return { 'ok', created }
