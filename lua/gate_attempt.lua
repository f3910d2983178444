-- Starts a delivery attempt: only by the consumer that owns the entry in the group's pending
-- list; resets the entry's idle time (so nobody claims it mid-attempt) and counts the attempt.
-- KEYS: 1 log, 2 tries (HASH id -> attempts)
-- ARGV: 1 group, 2 consumer, 3 id
-- Returns the attempt number, or -1 when the entry is not this consumer's any more.
local K_LOG, K_TRIES = KEYS[1], KEYS[2]
local p = redis.call('XPENDING', K_LOG, ARGV[1], ARGV[3], ARGV[3], 1)
if #p == 0 or p[1][2] ~= ARGV[2] then return -1 end
redis.call('XCLAIM', K_LOG, ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
return redis.call('HINCRBY', K_TRIES, ARGV[3], 1)
