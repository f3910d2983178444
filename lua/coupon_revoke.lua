-- Undoes an issuance whose database row could not be written (the row is the truth).
-- KEYS: 1 campaign, 2 holders; ARGV: 1 user id. Returns 1 if an issuance was undone.
if redis.call('SREM', KEYS[2], ARGV[1]) == 1 then
  redis.call('HINCRBY', KEYS[1], 'issued', -1)
  return 1
end
return 0
