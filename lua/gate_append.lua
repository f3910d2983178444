-- Appends a request to a gate's log (its own script: no room prelude).
-- KEYS: 1 cfg (STRING gate config JSON: the gate exists), 2 log (STREAM), 3 meta (HASH
--       logged / done / dead counters)
-- ARGV: 1 group, 2 max_logged, 3 method, 4 path, 5 headers JSON, 6 body
-- Returns {'ok', id, position} | {'no_gate'} | {'full'}
local K_CFG, K_LOG, K_META = KEYS[1], KEYS[2], KEYS[3]
if redis.call('EXISTS', K_CFG) == 0 then return {'no_gate'} end
if redis.call('EXISTS', K_LOG) == 0 then
  redis.call('XGROUP', 'CREATE', K_LOG, ARGV[1], '0', 'MKSTREAM')
end
if redis.call('XLEN', K_LOG) >= tonumber(ARGV[2]) then return {'full'} end
local n = redis.call('HINCRBY', K_META, 'logged', 1)
local id = redis.call('XADD', K_LOG, '*', 'n', n, 'm', ARGV[3], 'p', ARGV[4], 'h', ARGV[5], 'b', ARGV[6])
local done = tonumber(redis.call('HGET', K_META, 'done') or '0')
return {'ok', id, math.max(1, n - done)}
