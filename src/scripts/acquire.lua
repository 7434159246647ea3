-- Acquire (or re-confirm) a lock.
-- KEYS[1]: the lock key
-- KEYS[2]: (optional) the lock's fencing counter, in the same cluster slot
-- ARGV[1]: this acquisition's token
-- ARGV[2]: the lease in milliseconds
--
-- Returns {1} (or {1, fencing_token} with KEYS[2]) when the caller holds the
-- lock, or {0, pttl} with the current holder's remaining lease (-1: the key
-- has no expiry) so a waiter never sleeps past the moment the lock can end;
-- each followed by ARGV[1] (see below).
--
-- Idempotent for its own token: fred re-sends in-flight commands after a
-- reconnect, and a plain `SET NX` would then answer nil while we hold the
-- lock. Here the retry sees its own token and refreshes the lease instead
-- (and returns the fencing token it already drew).
--
-- Every reply ends with ARGV[1], this call's token: the caller checks it, so
-- a reply its client matched to the wrong command (fred 10.1 can, while it
-- follows an ASK redirection during resharding) is never taken for this one.

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

if call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  if KEYS[2] then
    return {1, call('INCR', KEYS[2]), ARGV[1]}
  end
  return {1, ARGV[1]}
end
if call('GET', KEYS[1]) == ARGV[1] then
  call('PEXPIRE', KEYS[1], ARGV[2])
  if KEYS[2] then
    return {1, tonumber(call('GET', KEYS[2])), ARGV[1]}
  end
  return {1, ARGV[1]}
end
return {0, call('PTTL', KEYS[1]), ARGV[1]}
