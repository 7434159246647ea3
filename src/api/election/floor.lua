-- Raise an election's term counter (its lock's fencing counter) to the
-- server's clock in milliseconds, so the terms drawn after it are larger
-- than every term drawn before a restart that lost the counter (see
-- src/election/mod.rs, "Terms").
-- KEYS[1]: the election lock's fencing counter
-- ARGV[1]: a nonce, echoed
--
-- Returns {floor, nonce}: the clock reading the counter is now at least.

local now = redis.call('TIME')
local floor = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local counter = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if counter < floor then
  redis.call('SET', KEYS[1], string.format('%d', floor))
end
return {floor, ARGV[1]}
