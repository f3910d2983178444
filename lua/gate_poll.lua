-- Where an offset stands: its stored response, its position in the log, or unknown.
-- KEYS: 1 log, 2 meta, 3 response
-- ARGV: 1 id
-- Returns {'done', blob} | {'pending', position} | {'unknown'}
local K_LOG, K_META, K_RESP = KEYS[1], KEYS[2], KEYS[3]
local r = redis.call('GET', K_RESP)
if r then return {'done', r} end
local e = redis.call('XRANGE', K_LOG, ARGV[1], ARGV[1])
if #e == 0 then return {'unknown'} end
local f = e[1][2]
local n = 0
for i = 1, #f, 2 do if f[i] == 'n' then n = tonumber(f[i + 1]) end end
local done = tonumber(redis.call('HGET', K_META, 'done') or '0')
return {'pending', math.max(1, n - done)}
