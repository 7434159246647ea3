-- Extend the leases of one or more locks: compare-and-pexpire, per key.
-- KEYS[i]: a lock key
-- ARGV[2i-1]: the token KEYS[i] was acquired with
-- ARGV[2i]: its new lease in milliseconds, counted from now
-- ARGV[2n + 1] (n keys): 'r' for a renewal, which never shortens a lease:
--   a renewal sent before a longer `extend` but run after it leaves the
--   longer lease (the guard counts from the newer command; Redis must not
--   hold less)
--
-- Returns one number per key: 1 extended, 0 the key is gone, -1 the key
-- holds something else (another token, or a value of another type); then
-- ARGV[1], which the caller checks: a reply its client matched to the wrong
-- command (fred 10.1 can, while it follows an ASK redirection during
-- resharding) is never taken for this one.
-- The renewer batches every lease that falls due together into one call
-- (grouped by cluster slot), so 10,000 held locks cost a few calls a second.

-- `call` (a Redis command whose error names it) comes from common.lua, which
-- scripts/mod.rs puts before every script.

local renewal = ARGV[2 * #KEYS + 1] == 'r'
local out = {}
for i, key in ipairs(KEYS) do
  local value = redis.pcall('GET', key)
  if type(value) == 'table' and value.err then
    -- A value of another type is someone else's; any other error (an ACL
    -- that denies GET) must not pass for a lost lock.
    if not string.find(value.err, '^WRONGTYPE') then
      error({err = value.err .. ' [GET]'})
    end
    out[i] = -1
  elseif value == ARGV[2 * i - 1] then
    if not renewal or call('PTTL', key) < tonumber(ARGV[2 * i]) then
      call('PEXPIRE', key, ARGV[2 * i])
    end
    out[i] = 1
  elseif value then
    out[i] = -1
  else
    out[i] = 0
  end
end
out[#KEYS + 1] = ARGV[1]
return out
