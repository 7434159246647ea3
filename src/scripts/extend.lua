-- Extend a lock's lease: compare-and-pexpire.
-- KEYS[1]: the lock key
-- ARGV[1]: the token the caller acquired it with
-- ARGV[2]: the new lease in milliseconds, counted from now
--
-- Returns 1 when the lease was extended, 0 when the caller no longer holds
-- the lock.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
