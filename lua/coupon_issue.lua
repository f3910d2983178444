-- First-come coupon issuance: never more than the stock, at most one per user.
-- KEYS: 1 campaign (HASH stock, issued), 2 holders (SET of user ids)
-- ARGV: 1 user id, 2 stock (used once, when the campaign is first seen here)
-- Returns 'issued' | 'already_issued' | 'sold_out'
local K, U = KEYS[1], KEYS[2]
redis.call('HSETNX', K, 'stock', ARGV[2])
if redis.call('SISMEMBER', U, ARGV[1]) == 1 then return 'already_issued' end
local stock = tonumber(redis.call('HGET', K, 'stock'))
local issued = tonumber(redis.call('HGET', K, 'issued') or '0')
if issued >= stock then return 'sold_out' end
redis.call('SADD', U, ARGV[1])
redis.call('HINCRBY', K, 'issued', 1)
return 'issued'
