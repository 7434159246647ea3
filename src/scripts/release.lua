-- Release a lock: compare-and-delete, then tell waiters.
-- KEYS[1]: the lock key
-- ARGV[1]: the token the caller acquired it with
--
-- Returns 1 when the caller's lock was deleted, 0 when the key is gone, -1
-- when it holds something else (another holder's token, or a value of
-- another type, which is left untouched).
--
-- On a release, publishes on `<key>:released` so that waiters subscribed to
-- it try at once instead of polling. Plain PUBLISH (not sharded SPUBLISH):
-- it works on every Redis version and, on a cluster, reaches subscribers on
-- any node; a PUBLISH nobody listens to costs a hash lookup.
local value = redis.pcall('GET', KEYS[1])
if value == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', KEYS[1] .. ':released', '')
  return 1
end
if value then
  return -1
end
return 0
