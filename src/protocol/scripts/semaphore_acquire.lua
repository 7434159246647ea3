-- Take one permit of a counting semaphore.
-- KEYS[1]: the permit set, a sorted set of holders' tokens scored by when
--   each permit expires (milliseconds, Redis server time)
-- ARGV[1]: the token; ARGV[2]: the lease in milliseconds; ARGV[3]: the
--   caller's number of permits
--
-- Expired permits (a crashed holder's) are pruned first, so they free
-- themselves. Idempotent for a token that holds a permit (a re-sent attempt
-- renews it). The count is the caller's: a process that asks with N permits
-- gets one while fewer than N are held, whatever others ask with.
--
-- Returns {1, 0, token} when the permit is taken; {0, wait, token} when all
-- are held, `wait` the milliseconds until the first held permit expires.

-- `call` (a Redis command whose error names it) comes from common.lua, which
-- scripts.rs puts before every script.

local time = call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local set, token = KEYS[1], ARGV[1]
local ttl = tonumber(ARGV[2])
call('ZREMRANGEBYSCORE', set, '-inf', now)
if call('ZSCORE', set, token) or call('ZCARD', set) < tonumber(ARGV[3]) then
  call('ZADD', set, now + ttl, token)
  if call('PTTL', set) < ttl then
    call('PEXPIRE', set, ttl)
  end
  return {1, 0, token}
end
local first = call('ZRANGE', set, 0, 0, 'WITHSCORES')
return {0, tonumber(first[2]) - now, token}
