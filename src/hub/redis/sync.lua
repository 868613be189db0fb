-- KEYS: subscriber counts, peers, history, floor, event channel
-- ARGV: instance, local count, alive key prefix, room key ttl (ms), history ttl (ms),
--       peer grace (ms), flask-sse channel name or '', then peer, subscription, claim
--       triples held here
local inst = ARGV[1]
local function alive(i) return i == inst or redis.call('EXISTS', ARGV[3] .. i) == 1 end
local now = now_ms()
local grace = tonumber(ARGV[6])
local changed = false
local want = {}
for i = 8, #ARGV, 3 do want[ARGV[i]] = ARGV[i + 2] .. ' ' .. inst .. ' ' .. ARGV[i + 1] end
local counts = redis.call('HGETALL', KEYS[1])
for i = 1, #counts, 2 do
  if counts[i] ~= FOREIGN and not alive(counts[i]) then
    redis.call('HDEL', KEYS[1], counts[i]); changed = true
  end
end
local held_before = count_held(KEYS[2])
tidy(KEYS[2], alive, now, grace)
local peers = redis.call('HGETALL', KEYS[2])
for i = 1, #peers, 2 do
  local claim, holder = place(peers[i + 1])
  if holder == inst and not want[peers[i]] then keep(KEYS[2], peers[i], claim, now, grace) end
end
for peer, value in pairs(want) do
  local current = redis.call('HGET', KEYS[2], peer)
  if not current then
    redis.call('HSET', KEYS[2], peer, value)
  elseif current ~= value then
    local claim, holder = place(current)
    if claim == string.match(value, '^(%S+)') and (holder == '-' or holder == inst) then
      redis.call('HSET', KEYS[2], peer, value)
    end
  end
end
if count_held(KEYS[2]) ~= held_before then changed = true end
local current = redis.call('HGET', KEYS[1], inst)
if ARGV[2] == '0' then
  if current then redis.call('HDEL', KEYS[1], inst); changed = true end
else
  if current ~= ARGV[2] then redis.call('HSET', KEYS[1], inst, ARGV[2]); changed = true end
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
  redis.call('PEXPIRE', KEYS[3], ARGV[5])
  redis.call('PEXPIRE', KEYS[4], ARGV[5])
end
local foreign = foreign_streams(ARGV[7])
if note_foreign(KEYS[1], foreign, ARGV[4]) then changed = true end
if changed then
  redis.call('PUBLISH', KEYS[5], presence(KEYS[1], KEYS[2], foreign))
end
return changed and 1 or 0
