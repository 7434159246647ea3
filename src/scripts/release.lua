-- Release a lock: compare-and-delete, then tell waiters.
-- KEYS[1]: the lock key
-- ARGV[1]: the token the caller acquired it with
-- ARGV[2]: the releasing mutex's id
--
-- Returns 1 when the caller's lock was deleted, 0 when the key is gone, -1
-- when it holds something else (another holder's token, or a value of
-- another type, which is left untouched).
--
-- On a release, publishes on `<key>:released` so that waiters subscribed to
-- it try at once instead of polling. Plain PUBLISH (not sharded SPUBLISH):
-- it works on every Redis version and, on a cluster, reaches subscribers on
-- any node. Nothing is published when no one listens.
--
-- When subscribers of more than one mutex (process) listen, the message
-- carries the releaser's id, and the releaser's own mutex wakes its waiter a
-- moment later: the lock passes to another process first, so processes take
-- turns instead of the releasing one winning every race.
local value = redis.pcall('GET', KEYS[1])
if value == ARGV[1] then
  redis.call('DEL', KEYS[1])
  local channel = KEYS[1] .. ':released'
  local listening = redis.call('PUBSUB', 'NUMSUB', channel)[2]
  if listening > 1 then
    redis.call('PUBLISH', channel, ARGV[2])
  elseif listening == 1 then
    redis.call('PUBLISH', channel, '')
  end
  return 1
end
if value then
  return -1
end
return 0
