-- KEYS: id counter, history, floor, pub/sub channel, subscriber counts, peers
-- ARGV: now (µs), history length, history ttl (ms), payload head, payload tail, stored tail,
--       sender peer or '', sender claim, addressee peer or '', flask-sse channel name or ''
-- An addressed event keeps its addressee in history (field `to`), so a replay skips it for
-- everyone else too.
if ARGV[7] ~= '' then
  local current = redis.call('HGET', KEYS[6], ARGV[7])
  local claim, holder, rest
  if current then claim, holder, rest = place(current) end
  if claim ~= ARGV[8] or (holder == '-' and tonumber(rest) <= now_ms()) then
    return {-1, 0}
  end
end
local id = redis.call('INCR', KEYS[1])
if id == 1 then
  -- A new counter (first run, or Redis lost its data) starts at the clock, so ids keep
  -- increasing across restarts and an old Last-Event-ID reads as a gap, never a match.
  redis.call('SET', KEYS[1], ARGV[1])
  id = redis.call('INCR', KEYS[1])
end
local sid = string.format('%d', id)
local max = tonumber(ARGV[2])
if redis.call('EXISTS', KEYS[2]) == 0 and redis.call('EXISTS', KEYS[3]) == 0 then
  redis.call('SET', KEYS[3], string.format('%d', id - 1))
end
if max == 0 then
  redis.call('SET', KEYS[3], sid)
else
  local len = redis.call('XLEN', KEYS[2])
  if len >= max then
    local evicted = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', len - max + 1)
    redis.call('SET', KEYS[3], string.match(evicted[#evicted][1], '^(%d+)'))
  end
  if ARGV[9] ~= '' then
    redis.call('XADD', KEYS[2], 'MAXLEN', max, sid .. '-1', 't', ARGV[6], 'to', ARGV[9])
  else
    redis.call('XADD', KEYS[2], 'MAXLEN', max, sid .. '-1', 't', ARGV[6])
  end
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
end
redis.call('PEXPIRE', KEYS[3], ARGV[3])
redis.call('PUBLISH', KEYS[4], ARGV[4] .. sid .. ARGV[5])
return {id, count_streams(KEYS[5], foreign_streams(ARGV[10]))}
