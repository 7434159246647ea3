-- Renew places in semaphores and read-write locks, per key.
-- KEYS[i]: a sorted set of tokens scored by expiry (ms, Redis server time)
-- ARGV[2i-1]: the token that holds a place in KEYS[i]
-- ARGV[2i]: its new lease in milliseconds, counted from now
--
-- Returns one number per key: 1 renewed, 0 the token's place is gone (or
-- expired: then it is removed), -1 the key holds another type of value;
-- then ARGV[1], which the caller checks.

local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local out = {}
for i, set in ipairs(KEYS) do
  local token, ttl = ARGV[2 * i - 1], tonumber(ARGV[2 * i])
  local score = redis.pcall('ZSCORE', set, token)
  if type(score) == 'table' and score.err then
    if not string.find(score.err, '^WRONGTYPE') then
      error({err = score.err .. ' [ZSCORE]'})
    end
    out[i] = -1
  elseif score and tonumber(score) > now then
    redis.call('ZADD', set, 'XX', now + ttl, token)
    if redis.call('PTTL', set) < ttl then
      redis.call('PEXPIRE', set, ttl)
    end
    out[i] = 1
  else
    if score then
      redis.call('ZREM', set, token)
    end
    out[i] = 0
  end
end
out[#KEYS + 1] = ARGV[1]
return out
