local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function place(value)
  return string.match(value, '^(%S+) (%S+) (%S+)$')
end
-- Keeps PEER's place for CLAIM until now + grace, or lets it go when there is no grace.
local function keep(key, peer, claim, now, grace)
  if grace <= 0 then
    redis.call('HDEL', key, peer)
    return
  end
  redis.call('HSET', key, peer, claim .. ' - ' .. string.format('%d', now + grace))
  if redis.call('PTTL', key) < grace then redis.call('PEXPIRE', key, grace) end
end
-- Lets expired (or unreadable) places go and keeps dead instances' places for their claims;
-- returns the places streams hold and the places taken (held or kept).
local function tidy(key, alive, now, grace)
  local held, taken = 0, 0
  local peers = redis.call('HGETALL', key)
  for i = 1, #peers, 2 do
    local claim, holder, rest = place(peers[i + 1])
    if not claim or (holder == '-' and tonumber(rest) <= now) then
      redis.call('HDEL', key, peers[i])
    elseif holder == '-' then
      taken = taken + 1
    elseif not alive(holder) then
      keep(key, peers[i], claim, now, grace)
      if grace > 0 then taken = taken + 1 end
    else
      held = held + 1
      taken = taken + 1
    end
  end
  return held, taken
end
local function held_ids(key)
  local ids = {}
  local peers = redis.call('HGETALL', key)
  for i = 1, #peers, 2 do
    local claim, holder = place(peers[i + 1])
    if claim and holder ~= '-' then ids[#ids + 1] = peers[i] end
  end
  table.sort(ids)
  return ids
end
local function count_held(key)
  return #held_ids(key)
end
-- Subscribers of another stack on the same Redis (--redis-format flask-sse): each flask-sse
-- stream is its own SUBSCRIBE to the channel NAME, which PUBSUB NUMSUB counts. sigrelay's
-- instances listen through one pattern (PSUBSCRIBE), which NUMSUB never counts, so nothing of
-- ours is in it. NAME is '' in the native format: no foreign subscribers.
local FOREIGN = 'flask-sse'
local function foreign_streams(name)
  if name == '' then return 0 end
  return tonumber(redis.call('PUBSUB', 'NUMSUB', name)[2])
end
-- Every stream on the room: each instance's count (the FOREIGN field is only the count last
-- announced, see note_foreign) plus `foreign`, the foreign streams now.
local function count_streams(key, foreign)
  local n = foreign
  local counts = redis.call('HGETALL', key)
  for i = 1, #counts, 2 do
    if counts[i] ~= FOREIGN then n = n + tonumber(counts[i + 1]) end
  end
  return n
end
-- The presence payload: `p<subscribers> <held> <id,id,...>` (subscribers: every stream,
-- foreign ones included; held: the peer ids holding a place).
local function presence(counts_key, peers_key, foreign)
  local ids = held_ids(peers_key)
  return 'p' .. count_streams(counts_key, foreign) .. ' ' .. #ids .. ' ' .. table.concat(ids, ',')
end
-- Keeps the foreign count last announced in the room's counts, so that of the instances that
-- poll it only the first to see a change announces it; true when it changed.
local function note_foreign(key, foreign, ttl)
  if foreign == tonumber(redis.call('HGET', key, FOREIGN) or '0') then return false end
  if foreign == 0 then
    redis.call('HDEL', key, FOREIGN)
  else
    redis.call('HSET', key, FOREIGN, foreign)
    redis.call('PEXPIRE', key, ttl)
  end
  return true
end
