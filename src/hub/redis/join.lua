-- KEYS: subscriber counts, peers, history, floor, id counter, event channel, control channel
-- ARGV: instance, subscription, peer or '', capacity, local count, replay (1/0),
--       alive key prefix, room key ttl (ms), channel name, proven claim or '', new claim,
--       peer grace (ms), flask-sse channel name or ''
local inst = ARGV[1]
local function alive(i) return i == inst or redis.call('EXISTS', ARGV[7] .. i) == 1 end
local counts = redis.call('HGETALL', KEYS[1])
for i = 1, #counts, 2 do
  if counts[i] ~= FOREIGN and not alive(counts[i]) then redis.call('HDEL', KEYS[1], counts[i]) end
end
local held, taken = tidy(KEYS[2], alive, now_ms(), tonumber(ARGV[12]))
local claim = ''
if ARGV[3] ~= '' then
  local current = redis.call('HGET', KEYS[2], ARGV[3])
  if current then
    local owner_claim, holder = place(current)
    if owner_claim ~= ARGV[10] then return {'taken'} end
    if holder == '-' then
      held = held + 1
    elseif holder ~= inst then
      redis.call('PUBLISH', KEYS[7], ARGV[9] .. '\n' .. ARGV[3] .. '\n' .. inst .. '\n' .. ARGV[2])
    end
    claim = owner_claim
  elseif taken >= tonumber(ARGV[4]) then
    return {'full'}
  else
    claim = ARGV[11]
    held = held + 1
  end
  redis.call('HSET', KEYS[2], ARGV[3], claim .. ' ' .. inst .. ' ' .. ARGV[2])
end
redis.call('HSET', KEYS[1], inst, ARGV[5])
local foreign = foreign_streams(ARGV[13])
note_foreign(KEYS[1], foreign, ARGV[8])
redis.call('PEXPIRE', KEYS[1], ARGV[8])
redis.call('PEXPIRE', KEYS[2], ARGV[8])
redis.call('PUBLISH', KEYS[6], presence(KEYS[1], KEYS[2], foreign))
local newest = redis.call('GET', KEYS[5]) or '0'
local floor = redis.call('GET', KEYS[4]) or newest
local entries = {}
if ARGV[6] == '1' then entries = redis.call('XRANGE', KEYS[3], '-', '+') end
return {'ok', newest, floor, entries, claim}
