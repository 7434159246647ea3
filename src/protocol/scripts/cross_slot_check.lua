-- Put after cross_slot.lua by scripts/mod.rs for a script that writes (the
-- release): touches every key first, so that a key the node does not serve
-- (its slot moved, or is moving and the key has left) fails the call before
-- anything is written, and the caller can send it again per slot.
for i = 1, #KEYS do
  redis.call('PTTL', KEYS[i])
end
