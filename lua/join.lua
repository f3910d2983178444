-- join: ARGV[3] owner hex, ARGV[4] random part of a new ticket id (16 hex).
-- Returns the owner's live ticket if any (invariant 4), else a new one; applies the free pass.
local c = load_cfg()
if not c then return { 'no_room' } end
local now, _, now_s = clock()
local owner = ARGV[3]
local existing = redis.call('HGET', K_USERS, owner)
if existing then
  local st = ticket_status(existing, now, c)
  if st and (st[1] == 'waiting' or st[1] == 'admitted') then
    if st[1] == 'waiting' then redis.call('ZADD', K_SEEN, 'XX', now_s, existing) end
    return status_reply(existing, 0, st, now_s, c)
  end
end
local seq = redis.call('INCR', K_SEQ)
local t = string.format('%016x', seq) .. ARGV[4]
redis.call('HSET', K_TIX, t, owner .. ':' .. now_s)
redis.call('HSET', K_USERS, owner, t)
if c.method == 'random_at_open' and now < c.opens then
  redis.call('HSET', K_STATS, 'preq_last', seq)
end
-- Most rooms have no free pass: no read of its count for them.
if c.free > 0 and phase(c, now) == 'open' and stat('free_used') < c.free
    and redis.call('ZCARD', K_WAIT) == 0 and capacity(c, now) > 0 then
  local untl = string.format('%d', now + c.ttl * 1000)
  redis.call('HSET', K_ADM, t, untl)
  record_batch(untl .. ':0:0', untl, 1)
  redis.call('HINCRBY', K_STATS, 'free_used', '1')
  return status_reply(t, 1, { 'admitted', -1, untl, owner, now_s }, now_s, c)
end
redis.call('ZADD', K_WAIT, seq, t)
redis.call('ZADD', K_SEEN, now_s, t)
-- What ticket_status would read back, from what this script just wrote: its rank is all
-- that is not known here (a join is the hot path of an on-sale's first minute).
local pos = redis.call('ZRANK', K_WAIT, t) + 1
if undrawn(c, seq) then pos = -1 end
return status_reply(t, 1, { 'waiting', pos, 0, owner, now_s }, now_s, c)
