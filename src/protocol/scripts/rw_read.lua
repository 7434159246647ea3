-- Take a read-write lock for reading.
-- KEYS[1]: readers, KEYS[2]: the writer, KEYS[3]: waiting writers' intents;
--   each a sorted set of tokens scored by expiry (milliseconds, Redis time)
-- ARGV[1]: the token; ARGV[2]: the lease in milliseconds
--
-- Expired entries are pruned first. A reader enters when no writer holds
-- the lock and no writer waits (an unexpired intent): writers are preferred.
-- Idempotent for a token that already reads.
--
-- Returns {1, 0, token} when taken; {0, wait, token} when not, `wait` the
-- milliseconds until the writer's lease or the first intent expires.

-- `call` (a Redis command whose error names it) comes from common.lua, which
-- scripts.rs puts before every script.

local time = call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local readers, writer, intents = KEYS[1], KEYS[2], KEYS[3]
local token, ttl = ARGV[1], tonumber(ARGV[2])
for _, set in ipairs(KEYS) do
  call('ZREMRANGEBYSCORE', set, '-inf', now)
end
local held = call('ZRANGE', writer, 0, 0, 'WITHSCORES')
local waiting = call('ZRANGE', intents, 0, 0, 'WITHSCORES')
if call('ZSCORE', readers, token) or (#held == 0 and #waiting == 0) then
  call('ZADD', readers, now + ttl, token)
  if call('PTTL', readers) < ttl then
    call('PEXPIRE', readers, ttl)
  end
  return {1, 0, token}
end
local wait = -1
if #held > 0 then
  wait = tonumber(held[2]) - now
end
if #waiting > 0 and (wait < 0 or tonumber(waiting[2]) - now < wait) then
  wait = tonumber(waiting[2]) - now
end
return {0, wait, token}
