-- Acquire (or re-confirm) a lock, and wait in its queue.
-- KEYS[1]: the lock key
-- KEYS[2]: the lock's fencing counter, in the same cluster slot
-- KEYS[3]: the lock's wait queue (a list of members, see below), same slot
-- ARGV[1]: this acquisition's token
-- ARGV[2]: the lease in milliseconds
-- ARGV[3]: '1' to draw a fencing token from KEYS[2], else ''
-- ARGV[4]: the mode:
--   'a': attempt only;
--   'q': attempt, and when the lock is held join the queue's tail (sent
--        once: never re-sent after a reconnect, so it never queues twice);
--   'j': as 'q', and answer the holder's remaining lease as well;
--   'p': attempt, and when the lock is held join the queue's tail unless
--        already in it (a waiter's poll).
-- ARGV[5]: this waiter's queue member, `1|<mutex id>|<claim ms>|<f or ->|<token>`
--   ('' in mode 'a'; `f`: the waiter takes the lock with a fencing token)
-- ARGV[6]: the pub/sub mode of hand-offs to others: 's' sharded, 'p' plain
--   (one server, Sentinel), 'c' plain on a cluster (see common.lua); sent in
--   every mode, since a free key with waiters queued is handed to them
--
-- Every join and every poll of a waiter in the queue gives the queue a
-- lifetime of QUEUE_TTL (common.lua): live waiters keep it, and the entries
-- of waiters that died go with it once no live one is left.
--
-- Returns {1} (or {1, fencing_token}) when the caller holds the lock;
-- {0, pttl} with the holder's remaining lease (-1: no expiry), or
-- {0, -3} in mode 'q' (the caller joined the queue); each followed by
-- ARGV[1], which the caller checks: a reply its client matched to the wrong
-- command (fred 10.1 can, while it follows an ASK redirection during
-- resharding) is never taken for this one.
--
-- The key already holding ARGV[1] is ours: a re-sent attempt, or a handoff
-- from the release script (which sets the key to the head waiter's token
-- with a short claim TTL, and draws its fencing token when its member says
-- so): its lease is set to ARGV[2], and the fencing token already drawn for
-- it is returned, so one acquisition draws exactly one.
--
-- A free key with waiters queued goes to the queue's head (the caller, when
-- it is the head), not to the caller: a newcomer does not barge.

-- `call` and `hand_off` come from common.lua, which scripts/mod.rs puts before
-- every script.

local token, ttl, mode, member = ARGV[1], ARGV[2], ARGV[4], ARGV[5]
local pubsub = ARGV[6]

-- Joins the queue's tail (unless `unless_there` and already in it), and
-- keeps the queue for QUEUE_TTL from now.
local function join(unless_there)
  if not (unless_there and call('LPOS', KEYS[3], member)) then
    call('RPUSH', KEYS[3], member)
  end
  call('PEXPIRE', KEYS[3], QUEUE_TTL)
end

local function take()
  call('SET', KEYS[1], token, 'PX', ttl)
  if ARGV[3] == '1' then
    return {1, call('INCR', KEYS[2]), token}
  end
  return {1, token}
end

local value = call('GET', KEYS[1])

if value == token then
  call('PEXPIRE', KEYS[1], ttl)
  if ARGV[3] == '1' then
    return {1, tonumber(call('GET', KEYS[2])), token}
  end
  return {1, token}
end

if not value then
  local head = call('LINDEX', KEYS[3], 0)
  if not head then
    return take()
  end
  if head == member then
    call('LPOP', KEYS[3])
    return take()
  end
  if hand_off(KEYS[1], KEYS[3], pubsub, token) ~= true then
    -- No live waiter before the caller (or the caller came up itself).
    return take()
  end
  -- The head has it now: wait behind it.
  if mode ~= 'a' then
    join(true)
  end
  return {0, call('PTTL', KEYS[1]), token}
end

if mode == 'q' or mode == 'j' then
  join(false)
  if mode == 'q' then
    return {0, -3, token}
  end
elseif mode == 'p' then
  join(true)
end
return {0, call('PTTL', KEYS[1]), token}
