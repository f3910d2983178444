-- Shared prelude of every room script (prepended by RedisStore; one script = one EVALSHA).
-- KEYS (all inside the room's hash tag, so a script touches one Cluster slot):
--  1 cfg       HASH  room settings (one field each)
--  2 seq       STRING join sequence (INCR)
--  3 waiting   ZSET  ticket -> order score (join seq; negative once drawn at open)
--  4 seen      ZSET  waiting ticket -> last seen (ms)
--  5 admitted  HASH  ticket -> admission end (ms), for admissions outside seq batches (free
--                    passes, drawn tickets); kept after expiry (expired = end <= now)
--  6 tickets   HASH  ticket -> "owner_hex:joined_ms"
--  7 users     HASH  owner_hex -> ticket (one live ticket per owner)
--  8 gone      HASH  ticket -> "l" left | "d" dropped
--  9 stats     HASH  counters (joins: seq), active, last_tick, preq_last, rate_pm, and ver:
--                    bumped by every change that can move a waiting ticket's rank (an
--                    admission, a leave or drop from the queue, the draw), so a rank read at
--                    one ver holds while ver stays (gateways' status reads)
-- 10 rate      LIST  "ms:admitted" samples, newest first
-- 11 draw      HASH  random_at_open draw record
-- 12 batches   ZSET  "until:lo:hi" -> hi: admitted join-sequence ranges, kept for lookups
-- 13 bexp      ZSET  batch member -> until: batches whose admissions have not been retired
-- 14 batchn    HASH  batch member -> admissions of that batch still live
-- 15 revoked   ZSET  ticket -> admission end (ms): admitted tickets that left before their
--                    end, whose tokens gateways refuse; a tick drops ended ones
-- A FIFO tick pops the lowest join sequences, so its admissions are one range [lo, hi] of
-- sequence numbers (tickets in the range that are not admitted are recorded in `gone`):
-- one batch entry records 3,000 admissions, and a ticket finds its admission by its own
-- sequence number (in its id). Drawn tickets and free passes are recorded per ticket in
-- `admitted` under a batch "until:0:0". `stats.active` is kept exact by retiring expired
-- batches before anyone reads it.
-- ARGV[1] = events channel, ARGV[2] = room id; script arguments follow.
local K_CFG, K_SEQ, K_WAIT, K_SEEN, K_ADM = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local K_TIX, K_USERS, K_GONE, K_STATS, K_RATE, K_DRAW = KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10], KEYS[11]
local K_BATCHES, K_BEXP, K_BATCHN, K_REVOKED = KEYS[12], KEYS[13], KEYS[14], KEYS[15]
local CHANNEL, ROOM = ARGV[1], ARGV[2]
local MAX_SWEEP = 50000
local CHUNK = 1000
local TWO52 = 4503599627370496

-- TIME's {seconds, µs} (decimal strings) as ms, spliced from the digits. Lua turns a number
-- into a string with printf("%.14g"), which cost more than a touch's ZADD (callgrind), so
-- scripts hand Redis and their replies strings they already have, or plain numbers (which
-- become integer replies).
local function ms_string(s, us)
  return s .. string.sub('00000' .. us, -6, -4)
end

-- The store's clock (every gateway agrees on it, DESIGN invariant 5): ms, µs, ms as a string.
local function clock()
  local t = redis.call('TIME')
  local s, us = tonumber(t[1]), tonumber(t[2])
  return s * 1000 + math.floor(us / 1000), s * 1000000 + us, ms_string(t[1], t[2])
end

local function load_cfg()
  local v = redis.call('HMGET', K_CFG, 'batch_size', 'tick_interval_ms', 'free_pass', 'max_active',
    'session_ttl_s', 'idle_timeout_s', 'queue_method', 'opens_at_ms', 'paused')
  if not v[1] then return nil end
  return { batch = tonumber(v[1]), interval = tonumber(v[2]), free = tonumber(v[3]),
    max_active = tonumber(v[4]), ttl = tonumber(v[5]), idle = tonumber(v[6]), method = v[7],
    opens = tonumber(v[8]), paused = (v[9] == '1') }
end

local function phase(c, now)
  if c.paused then return 'paused' elseif c.opens > now then return 'scheduled' end
  return 'open'
end

local function stat(field)
  return tonumber(redis.call('HGET', K_STATS, field) or '0')
end

-- Marks a change that can move waiting tickets' ranks (stats.ver; see the keys above).
local function ranks_moved()
  redis.call('HINCRBY', K_STATS, 'ver', 1)
end

-- Retires batches whose admissions ended; returns how many admissions expired.
local function sweep_expired(now)
  local ended = redis.call('ZRANGEBYSCORE', K_BEXP, '-inf', now, 'LIMIT', 0, 10000)
  local n = 0
  for _, b in ipairs(ended) do
    n = n + tonumber(redis.call('HGET', K_BATCHN, b) or '0')
    redis.call('HDEL', K_BATCHN, b)
    redis.call('ZREM', K_BEXP, b)
  end
  if n > 0 then
    redis.call('HINCRBY', K_STATS, 'active', -n)
    redis.call('HINCRBY', K_STATS, 'expired', n)
  end
  return n
end

local function active_count(now)
  sweep_expired(now)
  return stat('active')
end

-- Records n admissions of batch `member` ending at untl (a string of ms).
local function record_batch(member, untl, n)
  redis.call('ZADD', K_BEXP, untl, member)
  redis.call('HINCRBY', K_BATCHN, member, n)
  redis.call('HINCRBY', K_STATS, 'active', n)
  redis.call('HINCRBY', K_STATS, 'admitted', n)
end

local function capacity(c, now)
  if c.max_active == 0 then return math.huge end
  return math.max(0, c.max_active - active_count(now))
end

-- Calls fn(i, j) for each range of at most CHUNK indexes of list from `from` (default 1):
-- Lua's unpack has a stack limit, and unpack(list, i, j) needs no copy of the range.
local function chunked(list, fn, from)
  for i = from or 1, #list, CHUNK do
    fn(i, math.min(i + CHUNK - 1, #list))
  end
end

-- Marks tickets list[from..] seen at `now_s` (ms, a string; XX: tickets no longer waiting
-- are not re-added).
local function mark_seen(list, from, now_s)
  chunked(list, function(i, j)
    local args = {}
    for k = i, j do
      args[#args + 1] = now_s
      args[#args + 1] = list[k]
    end
    redis.call('ZADD', K_SEEN, 'XX', unpack(args))
  end, from)
end

local function undrawn(c, score)
  return c.method == 'random_at_open' and c.opens > 0 and redis.call('EXISTS', K_DRAW) == 0
    and score > 0 and score <= stat('preq_last')
end

local function seq_of(t)
  return tonumber(string.sub(t, 1, 16), 16)
end

-- {state, position (-1: none), until (0: none), owner, joined, batch member} or nil.
local function ticket_status(t, now, c)
  local info = redis.call('HGET', K_TIX, t)
  if not info then return nil end
  -- "owner:joined", the owner 32 hex digits (join.lua).
  local owner, joined = string.sub(info, 1, 32), string.sub(info, 34)
  -- Every redis.call costs a few microseconds of script overhead and status runs for every
  -- poll: a FIFO room's waiting ticket needs only its rank.
  local rank = redis.call('ZRANK', K_WAIT, t)
  if rank then
    local pos = rank + 1
    if c.method == 'random_at_open' and undrawn(c, tonumber(redis.call('ZSCORE', K_WAIT, t))) then
      pos = -1
    end
    return { 'waiting', pos, 0, owner, joined }
  end
  local g = redis.call('HGET', K_GONE, t)
  if g == 'l' then return { 'left', -1, 0, owner, joined } end
  if g == 'd' then return { 'dropped', -1, 0, owner, joined } end
  local untl, member = redis.call('HGET', K_ADM, t), nil
  if untl then
    member = untl .. ':0:0'
  else
    local seq = seq_of(t)
    local b = redis.call('ZRANGEBYSCORE', K_BATCHES, seq, '+inf', 'LIMIT', 0, 1)[1]
    if b then
      local u, lo = string.match(b, '^(%d+):(%d+):')
      if tonumber(lo) <= seq then untl, member = u, b end
    end
  end
  if not untl then return { 'dropped', -1, 0, owner, joined } end
  if tonumber(untl) > now then return { 'admitted', -1, untl, owner, joined, member } end
  return { 'expired', -1, untl, owner, joined, member }
end

-- The reply of join and status: ticket fields, then what the caller needs for the ETA.
local function status_reply(t, created, st, now_s, c)
  return { 'ok', t, created, st[1], st[2], st[3], st[4], st[5], now_s,
    redis.call('HGET', K_STATS, 'rate_pm') or '0', c.batch, c.interval, c.opens,
    c.paused and 1 or 0, c.max_active, c.ttl }
end

local function update_rate(now, n, c)
  redis.call('LPUSH', K_RATE, string.format('%d:%d', now, n))
  redis.call('LTRIM', K_RATE, 0, 1023)
  local window = math.max(60000, 3 * c.interval)
  local since = now - window
  local total, oldest = 0, now
  for _, e in ipairs(redis.call('LRANGE', K_RATE, 0, 1023)) do
    local at, k = string.match(e, '^(%d+):(%d+)$')
    at = tonumber(at)
    if at <= since then break end
    total = total + tonumber(k)
    if at < oldest then oldest = at end
  end
  local rate = 0
  if total > 0 then
    local span = math.min(math.max(now - oldest + c.interval, 1), window)
    rate = total * 60000 / span
  end
  redis.call('HSET', K_STATS, 'rate_pm', string.format('%.3f', rate))
end

-- The random_at_open draw: order key = first 52 bits of sha1(seed .. ticket), made negative
-- so the drawn pre-queue sorts before later (positive, FIFO) arrivals.
local function do_draw(c, now, us)
  local last_seq = stat('preq_last')
  local seed = redis.sha1hex(string.format('%s:%d:%d:%d', ROOM, c.opens, last_seq, us))
  local pre = redis.call('ZRANGEBYSCORE', K_WAIT, 1, last_seq)
  for _, t in ipairs(pre) do
    local h = tonumber(string.sub(redis.sha1hex(seed .. t), 1, 13), 16)
    redis.call('ZADD', K_WAIT, string.format('%d', h - TWO52), t)
  end
  redis.call('HSET', K_DRAW, 'seed', seed, 'at_us', string.format('%d', us),
    'last_seq', last_seq, 'shuffled', #pre)
  ranks_moved()
  return { seed, string.format('%d', us), last_seq, #pre }
end

-- Admits the next n waiting tickets; returns them in order and the admission end (string).
local function admit_next(n, now, c)
  local untl = string.format('%d', now + c.ttl * 1000)
  if n <= 0 then return {}, untl end
  n = math.min(n, 1000000)
  local tickets = redis.call('ZRANGE', K_WAIT, 0, n - 1)
  if #tickets == 0 then return tickets, untl end
  local first = tonumber(redis.call('ZSCORE', K_WAIT, tickets[1]))
  local last = tonumber(redis.call('ZSCORE', K_WAIT, tickets[#tickets]))
  redis.call('ZREMRANGEBYRANK', K_WAIT, 0, #tickets - 1)
  ranks_moved()
  local member
  if first > 0 then
    -- Scores are join sequences: the batch is the range [first, last].
    member = string.format('%s:%d:%d', untl, first, last)
    redis.call('ZADD', K_BATCHES, string.format('%d', last), member)
  else
    member = untl .. ':0:0'
  end
  chunked(tickets, function(i, j)
    if first <= 0 then
      local args = {}
      for k = i, j do
        args[#args + 1] = tickets[k]
        args[#args + 1] = untl
      end
      redis.call('HSET', K_ADM, unpack(args))
    end
    redis.call('ZREM', K_SEEN, unpack(tickets, i, j))
  end)
  record_batch(member, untl, #tickets)
  return tickets, untl
end

-- JSON by hand: ids are hex and the room [a-z0-9-], nothing needs escaping, and cjson
-- costs a millisecond on a batch of 3,000.
local function publish_admitted(tickets, untl, tick)
  if #tickets == 0 then return end
  redis.call('PUBLISH', CHANNEL, '{"type":"admitted","room":"' .. ROOM .. '","tick":' .. tick
    .. ',"tickets":["' .. table.concat(tickets, '","') .. '"],"expires_at_ms":' .. untl .. '}')
end
