-- put_room: ARGV[3..] field/value pairs of the whole config. Returns 1 when the room is new.
local created = redis.call('EXISTS', K_CFG) == 0 and 1 or 0
local args = {}
for i = 3, #ARGV do args[#args + 1] = ARGV[i] end
redis.call('HSET', K_CFG, unpack(args))
redis.call('PUBLISH', CHANNEL, cjson.encode({ type = 'config_changed', room = ROOM }))
return { 'ok', created }
