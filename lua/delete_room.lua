-- delete_room: removes every key of the room. Returns 1 when it existed.
local existed = redis.call('EXISTS', K_CFG)
redis.call('DEL', unpack(KEYS))
if existed == 1 then
  redis.call('PUBLISH', CHANNEL, cjson.encode({ type = 'config_changed', room = ROOM }))
end
return { 'ok', existed }
