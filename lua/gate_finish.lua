-- Stores an entry's response, then acknowledges and removes the entry (in that order, in one
-- script: a poll sees either the entry or its response, never neither). With a dead-letter
-- reason the entry is copied to the dead-letter stream first.
-- KEYS: 1 log, 2 meta, 3 tries, 4 response (STRING), 5 dead (STREAM)
-- ARGV: 1 group, 2 id, 3 response blob, 4 ttl seconds, 5 reason ('' = delivered), 6 max dead
-- Returns 1, or 0 when the entry was already finished.
local K_LOG, K_META, K_TRIES, K_RESP, K_DEAD = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local id = ARGV[2]
local e = redis.call('XRANGE', K_LOG, id, id)
if #e == 0 then return 0 end
redis.call('SET', K_RESP, ARGV[3], 'EX', tonumber(ARGV[4]))
if ARGV[5] ~= '' then
  local f = e[1][2]
  local fields = {}
  for i = 1, #f, 2 do fields[f[i]] = f[i + 1] end
  redis.call('XADD', K_DEAD, 'MAXLEN', '~', ARGV[6], '*', 'offset', id, 'reason', ARGV[5],
    'm', fields.m, 'p', fields.p, 'h', fields.h, 'b', fields.b)
  redis.call('HINCRBY', K_META, 'dead', 1)
end
redis.call('XACK', K_LOG, ARGV[1], id)
redis.call('XDEL', K_LOG, id)
redis.call('HDEL', K_TRIES, id)
redis.call('HINCRBY', K_META, 'done', 1)
return 1
