-- Release one or more locks: compare-and-delete per key, or hand the key to
-- the next live waiter in its queue.
-- KEYS[2i - 1]: a lock key `P K`; KEYS[2i]: its wait queue `P \xff {T}:queue:K`
--   (all in one cluster slot)
-- ARGV[1]: the pub/sub mode: 's' sharded, 'p' plain (one server, Sentinel),
--   'c' plain on a cluster (see common.lua and channel.rs)
-- ARGV[2]: echoed at the end of the reply (the caller checks it)
-- For each key i, from n = 2 + 3 (i - 1):
--   ARGV[n + 1]: the token the key was acquired with
--   ARGV[n + 2]: the key's release channel (in its slot when sharded);
--     empty for the plain channel `<key>:released`
--   ARGV[n + 3]: a queue member to remove first (a waiter that gave up), or ''
--
-- Returns one number per key: 1 when the caller's lock was released (deleted
-- or handed on), 0 when the key is gone, -1 when it holds something else
-- (another holder's token, or a value of another type, which is left
-- untouched); then ARGV[2], which the caller checks: a reply its client
-- matched to the wrong command (fred 10.1 can, while it follows an ASK
-- redirection during resharding) is never taken for this one. Releases that
-- arrive while one is in flight are sent together in one call (group
-- commit).
--
-- Handoff: when waiters are queued, the key is not deleted but set to the
-- head waiter's token for the claim TTL its member names (with its fencing
-- token drawn when the member says so), and that waiter's mutex is told on
-- its own handoff channel `P {T}:handoff:<mutex id>:K`. A waiter whose mutex
-- no longer listens there (its process died, or its subscriber connection
-- dropped) is skipped, and told nothing (see hand_off in common.lua). So the
-- key is never free while live waiters queue, and exactly one waiter is
-- woken per release.
--
-- The handoff channel and the fencing counter `P \xff {T}:fence:K` are
-- derived from the lock and queue names (common.lua) rather than sent, which
-- keeps a batch of releases small. The fencing counter (in the same slot) is
-- touched only when the lock is handed to a waiter that takes it with
-- fencing.
--
-- With no one queued, the key is deleted and, when anyone listens on the
-- key's release channel (PUBSUB NUMSUB, or SHARDNUMSUB on the node that
-- owns the slot; always in mode 'c': waiters that do not queue, such as
-- multi-key ones), a release message is published there.

-- `call`, `hand_off` and `announce` come from common.lua, which scripts/mod.rs
-- puts before every script.

-- GET, except that a value of another type reads as itself (a table).
local function get(key)
  local value = redis.pcall('GET', key)
  if type(value) == 'table' and value.err and not string.find(value.err, '^WRONGTYPE') then
    error({err = value.err .. ' [GET]'})
  end
  return value
end

local mode = ARGV[1]

local out = {}
for i = 1, #KEYS / 2 do
  local lock, queue = KEYS[2 * i - 1], KEYS[2 * i]
  local n = 2 + 3 * (i - 1)
  local token, channel = ARGV[n + 1], ARGV[n + 2]
  if ARGV[n + 3] ~= '' then
    call('LREM', queue, 0, ARGV[n + 3])
  end
  local value = get(lock)
  if value == token then
    -- The releaser's own entry (it cannot be waiting any more) is dropped.
    local handed
    repeat
      handed = hand_off(lock, queue, mode, token)
    until handed ~= 'own'
    if not handed then
      call('DEL', lock)
      if channel == '' then
        channel = lock .. ':released'
      end
      announce(mode, channel)
    end
    out[i] = 1
  elseif value then
    out[i] = -1
  else
    out[i] = 0
  end
end
out[#out + 1] = ARGV[2]
return out
