-- Acquire (or re-confirm) a lock.
-- KEYS[1]: the lock key
-- ARGV[1]: this acquisition's token
-- ARGV[2]: the lease in milliseconds
--
-- Returns {1} when the caller holds the lock, or {0, pttl} with the current
-- holder's remaining lease (-1: the key has no expiry) so a waiter never
-- sleeps past the moment the lock can become free.
--
-- Idempotent for its own token: fred re-sends in-flight commands after a
-- reconnect, and a plain `SET NX` would then answer nil while we hold the
-- lock. Here the retry sees its own token and refreshes the lease instead.
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {1}
end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1}
end
return {0, redis.call('PTTL', KEYS[1])}
