-- Put before every script by scripts/mod.rs (and by the test support): helpers
-- the scripts share. Lua functions that a script does not use cost nothing.

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

-- The names derived from a lock `P K` and its wait queue
-- `P \xff {T}:queue:K` (see keys.rs): the handoff channel around a mutex id
-- (`P {T}:handoff:` and `:K`), and the fencing counter `P \xff {T}:fence:K`,
-- in the same slot. `P` ends where the queue's 0xFF byte is (no prefix or
-- lock key contains it), and `{T}:` sits between it and `queue:K`.
local function derived(lock, queue)
  local p = string.find(queue, '\255', 1, true)
  local prefix, key = string.sub(queue, 1, p - 1), string.sub(lock, p)
  local tag = string.sub(queue, p + 1, #queue - #key - #'queue:')
  return prefix .. tag .. 'handoff:', ':' .. key, prefix .. '\255' .. tag .. 'fence:' .. key
end

-- Pub/sub by mode (see channel.rs): 's' sharded (SPUBLISH, counted with
-- SHARDNUMSUB), 'p' plain on one server or Sentinel (PUBLISH, counted with
-- NUMSUB, which leaves pattern subscribers out), 'c' plain on a cluster,
-- where no count on one node says who will receive a message.
local function publisher(mode)
  return mode == 's' and 'SPUBLISH' or 'PUBLISH'
end

-- Whether `channel` has a subscriber on this node (always true in mode 'c',
-- where that cannot be known: the message is then sent regardless).
local function listened(mode, channel)
  if mode == 'c' then
    return true
  end
  local numsub = mode == 's' and 'SHARDNUMSUB' or 'NUMSUB'
  return call('PUBSUB', numsub, channel)[2] > 0
end

-- Tells whoever listens on a release channel (a wake-up, nothing more).
local function announce(mode, channel)
  if listened(mode, channel) then
    call(publisher(mode), channel, '')
  end
end

-- How long a wait queue lives after a waiter last joined it or polled it
-- (queue.rs: QUEUE_TTL): the entries of waiters that died go with it.
local QUEUE_TTL = 10000

-- A queue member `1|<mutex id>|<claim ms>|<f or ->|<token>`, or the
-- unversioned form of earlier releases `<mutex id>|<claim ms>|<f or ->|<token>`:
-- its mutex id, claim, fencing flag and token; nil for another format.
local function parse_member(member)
  local id, claim, fenced, waiter = string.match(member, '^1|([^|]*)|(%d+)|([f-])|(.*)$')
  if id then
    return id, claim, fenced, waiter
  end
  return string.match(member, '^([^|]*)|(%d+)|([f-])|(.*)$')
end

-- Direct handoff (see queue.rs): pops the lock's queued waiters until one
-- is alive, sets the lock to its token for its claim TTL, draws its fencing
-- token when its member says so, and tells it on its handoff channel.
-- Alive: where counts are exact (modes 's' and 'p'), its mutex subscribes
-- to its handoff channel on this node, and only then is the message sent,
-- so no waiter ever hears of a hand-off this script moved past (through a
-- replica, a demoted master or the cluster bus). In mode 'c' the head is
-- taken as alive and the message always sent; its waiter confirms before
-- it uses the lock. Returns true when a waiter has the lock, 'own' when
-- the member with the token `own` came up (the caller decides), false when
-- the queue ran out.
local function hand_off(lock, queue, mode, own)
  local head, tail, fence
  while true do
    local member = call('LPOP', queue)
    if not member then
      return false
    end
    local id, claim, fenced, waiter = parse_member(member)
    if waiter == own then
      return 'own'
    end
    if not id then
      -- Not a format this release knows (a newer release's waiter, during
      -- a rolling upgrade): it cannot be served, and is said so in the
      -- server's log rather than dropped silently.
      redis.log(redis.LOG_WARNING, 'distributed-mutex: skipped a wait queue member of an unknown format in '
        .. queue .. ' (a waiter of a newer release?); it will poll: ' .. member)
    else
      if not head then
        head, tail, fence = derived(lock, queue)
      end
      local channel = head .. id .. tail
      if listened(mode, channel) then
        call('SET', lock, waiter, 'PX', claim)
        if fenced == 'f' then
          call('INCR', fence)
        end
        call(publisher(mode), channel, waiter)
        return true
      end
    end
  end
end
