-- Release one or more locks: compare-and-delete per key, then tell waiters.
-- KEYS[i]: a lock key (all in one cluster slot)
-- ARGV[1]: the releasing mutex's id
-- ARGV[2]: 's' to announce with sharded pub/sub (SPUBLISH), 'p' with PUBLISH
-- ARGV[2i + 1]: the token KEYS[i] was acquired with
-- ARGV[2i + 2]: the release channel of KEYS[i] (in its slot when sharded);
--   empty for the plain channel `<key>:released`
--
-- Returns one number per key: 1 when the caller's lock was deleted, 0 when
-- the key is gone, -1 when it holds something else (another holder's token,
-- or a value of another type, which is left untouched); then ARGV[3], which
-- the caller checks: a reply its client matched to the wrong command (fred
-- 10.1 can, while it follows an ASK redirection during resharding) is never
-- taken for this one. Releases that arrive
-- while one is in flight are sent together in one call (group commit).
--
-- On a release, publishes on the key's channel so that waiters subscribed to
-- it try at once instead of polling; nothing is published when no one
-- listens (PUBSUB NUMSUB, or SHARDNUMSUB on the node that owns the slot).
-- On Redis Cluster with Redis 7+, sharded pub/sub keeps the message on the
-- key's shard and the listener count right; plain PUBLISH elsewhere.
--
-- When subscribers of more than one mutex (process) listen, the message
-- carries the releaser's id, and the releaser's own mutex wakes its waiter a
-- moment later: the lock passes to another process first, so processes take
-- turns instead of the releasing one winning every race.

-- Runs a Redis command; an error reply names the command, since Redis 7.0
-- reports a command that the user's ACL denies inside a script without
-- saying which one ("can't run this command or subcommand").
local function call(command, ...)
  local reply = redis.pcall(command, ...)
  if type(reply) == 'table' and reply.err then
    error({err = reply.err .. ' [' .. command .. ']'})
  end
  return reply
end

-- GET, except that a value of another type reads as itself (a table).
local function get(key)
  local value = redis.pcall('GET', key)
  if type(value) == 'table' and value.err and not string.find(value.err, '^WRONGTYPE') then
    error({err = value.err .. ' [GET]'})
  end
  return value
end

local sharded = ARGV[2] == 's'
local publish = sharded and 'SPUBLISH' or 'PUBLISH'
local numsub = sharded and 'SHARDNUMSUB' or 'NUMSUB'
local out = {}
for i, key in ipairs(KEYS) do
  local value = get(key)
  if value == ARGV[2 * i + 1] then
    call('DEL', key)
    local channel = ARGV[2 * i + 2]
    if channel == '' then
      channel = key .. ':released'
    end
    local listening = call('PUBSUB', numsub, channel)[2]
    if listening > 1 then
      call(publish, channel, ARGV[1])
    elseif listening == 1 then
      call(publish, channel, '')
    end
    out[i] = 1
  elseif value then
    out[i] = -1
  else
    out[i] = 0
  end
end
out[#KEYS + 1] = ARGV[3]
return out
