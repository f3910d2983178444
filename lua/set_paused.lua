-- set_paused: ARGV[3] '1' or '0'.
if redis.call('EXISTS', K_CFG) == 0 then return { 'no_room' } end
redis.call('HSET', K_CFG, 'paused', ARGV[3])
redis.call('PUBLISH', CHANNEL, cjson.encode({ type = 'config_changed', room = ROOM }))
return { 'ok' }
