-- Deletes a gate's config unless its log still holds entries (they would never be answered),
-- noting the deletion for ARGV[1] seconds: a gate found gone without the note was lost.
-- KEYS: 1 cfg, 2 log, 3 deletion note
-- Returns {'busy', backlog} | {'ok', existed (0/1)}
local n = 0
if redis.call('EXISTS', KEYS[2]) == 1 then n = redis.call('XLEN', KEYS[2]) end
if n > 0 then return {'busy', n} end
redis.call('SET', KEYS[3], '1', 'EX', ARGV[1])
return {'ok', redis.call('DEL', KEYS[1])}
