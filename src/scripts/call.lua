-- Put before every script by scripts.rs (and tests/support/scripts.rs).
--
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

