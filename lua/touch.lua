-- touch: ARGV[3..] ticket ids seen now. XX: only tickets still waiting are updated.
if redis.call('EXISTS', K_CFG) == 0 then return { 'no_room' } end
local now = clock()
local tickets = {}
for i = 3, #ARGV do tickets[#tickets + 1] = ARGV[i] end
chunked(tickets, function(part)
  local args = {}
  for _, t in ipairs(part) do
    args[#args + 1] = now
    args[#args + 1] = t
  end
  redis.call('ZADD', K_SEEN, 'XX', unpack(args))
end)
return { 'ok' }
