-- Publish an election's leader (see src/election/mod.rs): the caller holds
-- the election's lock with ARGV[1]; its value and term go into the
-- election's hash, and the change is announced.
-- KEYS[1]: the election's lock key
-- KEYS[2]: the election's hash (token, value, term, since), same slot
-- ARGV[1]: the leader's lock token
-- ARGV[2]: the leader's value
-- ARGV[3]: the leader's term (its fencing token)
-- ARGV[4]: 'new' for a new leader (sets `since` from the server's clock),
--          'value' for a proclamation (the value only)
-- ARGV[5]: the election's news channel
-- ARGV[6]: 's' to announce with SPUBLISH, 'p' with PUBLISH
-- ARGV[7]: for a new leader, the floor its campaign raised the term counter
--          to (floor.lua): a smaller term means the counter was lost since
--
-- Returns {1, ARGV[1]} when the caller held the lock and the hash was
-- written, {0, ARGV[1]} when the lock is not the caller's (nothing written),
-- {2, ARGV[1]} when the term is below the floor (nothing written: the
-- caller raises the floor again and campaigns anew).
-- For a proclamation the hash must also name the caller as leader.

local token = ARGV[1]
if redis.call('GET', KEYS[1]) ~= token then
  return {0, token}
end
if ARGV[4] == 'new' and tonumber(ARGV[3]) < tonumber(ARGV[7]) then
  return {2, token}
end
if ARGV[4] == 'new' then
  local now = redis.call('TIME')
  local since = now[1] .. string.format('%03d', math.floor(now[2] / 1000))
  redis.call('HSET', KEYS[2], 'token', token, 'value', ARGV[2], 'term', ARGV[3], 'since', since)
else
  if redis.call('HGET', KEYS[2], 'token') ~= token then
    return {0, token}
  end
  redis.call('HSET', KEYS[2], 'value', ARGV[2])
end
redis.call(ARGV[6] == 's' and 'SPUBLISH' or 'PUBLISH', ARGV[5], ARGV[3])
return {1, token}
