-- Release a lock: compare-and-delete.
-- KEYS[1]: the lock key
-- ARGV[1]: the token the caller acquired it with
--
-- Returns 1 when the caller's lock was deleted, 0 when the key is gone or
-- belongs to someone else (whose lock is left untouched).
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
