-- Take a read-write lock for writing.
-- KEYS[1]: readers, KEYS[2]: the writer, KEYS[3]: waiting writers' intents
--   (sorted sets of tokens scored by expiry, milliseconds, Redis time)
-- ARGV[1]: the token; ARGV[2]: the lease in milliseconds; ARGV[3]: how long
--   this writer's intent lasts if it must wait (0: a try, which leaves none)
--
-- A writer enters when no one reads or writes; its intent goes. Otherwise
-- it records (or refreshes) its intent, which stops new readers until it
-- expires: a writer that dies or gives up without withdrawing it blocks
-- readers for at most ARGV[3]. Idempotent for the token that writes.
--
-- Returns {1, 0, token} when taken; {0, wait, token} when not, `wait` the
-- milliseconds until the writer's lease, or the last reader's, expires.

-- `call` (a Redis command whose error names it) comes from common.lua, which
-- scripts.rs puts before every script.

local time = call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local readers, writer, intents = KEYS[1], KEYS[2], KEYS[3]
local token, ttl, intent = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
for _, set in ipairs(KEYS) do
  call('ZREMRANGEBYSCORE', set, '-inf', now)
end
local held = call('ZRANGE', writer, 0, 0, 'WITHSCORES')
if held[1] == token or (#held == 0 and call('ZCARD', readers) == 0) then
  call('ZADD', writer, now + ttl, token)
  if call('PTTL', writer) < ttl then
    call('PEXPIRE', writer, ttl)
  end
  call('ZREM', intents, token)
  return {1, 0, token}
end
if intent > 0 then
  call('ZADD', intents, now + intent, token)
  if call('PTTL', intents) < intent then
    call('PEXPIRE', intents, intent)
  end
end
local wait
if #held > 0 then
  wait = tonumber(held[2]) - now
else
  local last = call('ZRANGE', readers, -1, -1, 'WITHSCORES')
  wait = tonumber(last[2]) - now
end
return {0, wait, token}
