-- Announce a change of an election's leader (after a resignation), so
-- observers read the state again (see src/election/observe.rs).
-- KEYS[1]: the election's hash (routes the call to the election's slot)
-- ARGV[1]: the election's news channel
-- ARGV[2]: 's' to announce with SPUBLISH, 'p' with PUBLISH
-- ARGV[3]: a nonce, echoed
-- Returns {1, nonce}.

redis.call(ARGV[2] == 's' and 'SPUBLISH' or 'PUBLISH', ARGV[1], 'resigned')
return {1, ARGV[3]}
