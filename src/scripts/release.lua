-- Release one or more locks: compare-and-delete per key, then tell waiters.
-- KEYS[i]: a lock key (all in one cluster slot)
-- ARGV[1]: the releasing mutex's id
-- ARGV[i + 1]: the token KEYS[i] was acquired with
--
-- Returns one number per key: 1 when the caller's lock was deleted, 0 when
-- the key is gone, -1 when it holds something else (another holder's token,
-- or a value of another type, which is left untouched). Releases that arrive
-- while one is in flight are sent together in one call (group commit).
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
local out = {}
for i, key in ipairs(KEYS) do
  local value = redis.pcall('GET', key)
  if value == ARGV[i + 1] then
    redis.call('DEL', key)
    local channel = key .. ':released'
    local listening = redis.call('PUBSUB', 'NUMSUB', channel)[2]
    if listening > 1 then
      redis.call('PUBLISH', channel, ARGV[1])
    elseif listening == 1 then
      redis.call('PUBLISH', channel, '')
    end
    out[i] = 1
  elseif value then
    out[i] = -1
  else
    out[i] = 0
  end
end
return out
