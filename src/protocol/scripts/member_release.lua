-- Give up a place in a semaphore or read-write lock, and tell waiters.
-- KEYS[1]: the sorted set the token holds its place in; KEYS[2..]: other
--   sets to clear it from (a writer's intent)
-- ARGV[1]: the token; ARGV[2]: the pub/sub mode ('s', 'p' or 'c': see
--   common.lua);
-- ARGV[3..]: the channels to announce on (in the keys' slot when sharded)
--
-- Returns {1, token} when the token held an unexpired place in KEYS[1],
-- {0, token} when it did not (expired, or never there). Whenever the token
-- was removed from any set, waiters listening on the channels are told.

-- `call` (a Redis command whose error names it) comes from common.lua, which
-- scripts.rs puts before every script.

local time = call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local token = ARGV[1]
local score = call('ZSCORE', KEYS[1], token)
local held = 0
if score and tonumber(score) > now then
  held = 1
end
local removed = 0
for _, set in ipairs(KEYS) do
  removed = removed + call('ZREM', set, token)
end
if removed > 0 then
  for i = 3, #ARGV do
    announce(ARGV[2], ARGV[i])
  end
end
return {held, token}
