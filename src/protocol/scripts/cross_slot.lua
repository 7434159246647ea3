-- Put before extend.lua (after the shebang `#!lua flags=allow-cross-slot-keys`)
-- by scripts/mod.rs, for one call that renews keys of every slot one cluster node
-- serves (Redis 7.0+, Valkey; see route.rs).
-- KEYS[1]: the first lock key (the call is routed, and checked, by its slot)
-- ARGV[1]: n, the number of lock keys
-- ARGV[2 .. n + 1]: the lock keys (undeclared: a script may touch keys of
--   another slot of its node only when they are not in KEYS; one that the
--   node does not serve, or that has moved out of a migrating slot, fails
--   the whole call, and the caller renews per slot instead)
-- ARGV[n + 2 ..]: what extend.lua takes as its ARGV
--
-- The script after this one reads these `KEYS` and `ARGV`: the lock keys,
-- and its own arguments.
local n = tonumber(ARGV[1])
local KEYS, ARGV = {unpack(ARGV, 2, n + 1)}, {unpack(ARGV, n + 2)}
