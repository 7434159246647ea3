-- Acquire (or re-confirm) every lock of a multi-key lock, all or none.
-- KEYS[i]: the lock keys (all in one cluster slot; no duplicates)
-- ARGV[1]: this acquisition's token (one for every key)
-- ARGV[2]: the lease in milliseconds
--
-- Every key is read first: when one of them is held by anyone else, nothing
-- is written and the reply is {0, i, pttl} for the first such KEYS[i], with
-- its holder's remaining lease (-1: the key has no expiry; -2: it vanished);
-- when one holds a value of another type, {2, i}, nothing written. Else
-- every key is set to ARGV[1] with the lease and the reply is {1}. So the
-- script never leaves part of the set behind.
--
-- Idempotent for its own token, like acquire.lua: a key that already holds
-- ARGV[1] (this very call re-sent after a reconnect) counts as free and gets
-- its lease refreshed.
--
-- Every reply ends with ARGV[1]: the caller checks it, so a reply its client
-- matched to the wrong command (fred 10.1 can, while it follows an ASK
-- redirection during resharding) is never taken for this one.

-- `call` (a Redis command whose error names it) comes from common.lua, which
-- scripts/mod.rs puts before every script.

for i, key in ipairs(KEYS) do
  local value = redis.pcall('GET', key)
  if type(value) == 'table' and value.err then
    if string.find(value.err, '^WRONGTYPE') then
      return {2, i, ARGV[1]}
    end
    error({err = value.err .. ' [GET]'})
  end
  if value and value ~= ARGV[1] then
    return {0, i, call('PTTL', key), ARGV[1]}
  end
end
for _, key in ipairs(KEYS) do
  call('SET', key, ARGV[1], 'PX', ARGV[2])
end
return {1, ARGV[1]}
