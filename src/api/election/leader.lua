-- Read an election's leader (see src/election/mod.rs).
-- KEYS[1]: the election's lock key
-- KEYS[2]: the election's hash (token, value, term, since), same slot
-- ARGV[1]: a nonce, echoed last so the caller can match the reply
--
-- Returns {1, pttl, value, term, since, nonce} when the lock is held by the
-- token the hash names (an established leader, its lease left in ms), else
-- {0, pttl or -2, last term or '', nonce}: no leader (the lock is free, or
-- its holder has not published itself yet).

local holder = redis.call('GET', KEYS[1])
local info = redis.call('HMGET', KEYS[2], 'token', 'value', 'term', 'since')
local pttl = -2
if holder then
  pttl = redis.call('PTTL', KEYS[1])
end
if holder and holder == info[1] then
  return {1, pttl, info[2], info[3], info[4], ARGV[1]}
end
return {0, pttl, info[3] or '', ARGV[1]}
