-- Put before every script by scripts.rs (and by the test support): helpers
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

-- Direct handoff (see queue.rs): pops the lock's queued waiters, members
-- `<mutex id>|<claim ms>|<f or ->|<token>`, until one is alive (its mutex
-- listens on its handoff channel: the publish reaches someone), sets the
-- lock to its token for its claim TTL, draws its fencing token when its
-- member says so, and tells it. Returns true when a waiter has the lock,
-- 'own' when the member with the token `own` came up (the caller decides),
-- false when the queue ran out (the lock may then hold a dead waiter's
-- token). `publish` is PUBLISH or SPUBLISH.
local function hand_off(lock, queue, publish, own)
  local head, tail, fence
  while true do
    local member = call('LPOP', queue)
    if not member then
      return false
    end
    local id, claim, fenced, waiter = string.match(member, '^([^|]*)|(%d+)|([f-])|(.*)$')
    if waiter == own then
      return 'own'
    end
    if id then
      if not head then
        head, tail, fence = derived(lock, queue)
      end
      call('SET', lock, waiter, 'PX', claim)
      if fenced == 'f' then
        call('INCR', fence)
      end
      if call(publish, head .. id .. tail, waiter) > 0 then
        return true
      end
    end
  end
end

