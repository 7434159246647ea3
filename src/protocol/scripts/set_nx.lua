-- The first attempts of several locks, sent together (group commit): a
-- plain `SET key token NX PX ttl` per key, as a lone first attempt sends.
-- KEYS[i]: a lock key
-- ARGV[1]: echoed at the end of the reply (the caller checks it)
-- ARGV[2i], ARGV[2i + 1]: key i's token and TTL in milliseconds
--
-- Returns one number per key: 1 when it set the key, 0 when the key exists
-- (the caller's acquire script then decides, as after a lone SET NX); then
-- ARGV[1].

local out = {}
for i = 1, #KEYS do
  if redis.call('SET', KEYS[i], ARGV[2 * i], 'NX', 'PX', ARGV[2 * i + 1]) then
    out[i] = 1
  else
    out[i] = 0
  end
end
out[#out + 1] = ARGV[1]
return out
