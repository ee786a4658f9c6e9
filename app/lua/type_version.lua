-- Save a new schema version of an event type, unless another was saved since the caller looked.
--
-- KEYS[1] the type's versions hash   KEYS[2] type -> current version hash   KEYS[3] change counter
-- ARGV[1] event type   ARGV[2] the version the caller based its check on ('0' = none)
-- ARGV[3] the new version's number (ARGV[2] + 1)   ARGV[4] the new version's JSON
--
-- Returns the new version number, or {'MOVED', current} when the current version is not ARGV[2]
-- (the caller tested recent events against a stale view: it must look again).
local current = redis.call('HGET', KEYS[2], ARGV[1]) or '0'
if current ~= ARGV[2] then return {'MOVED', current} end
redis.call('HSET', KEYS[1], ARGV[3], ARGV[4])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
redis.call('INCR', KEYS[3])
return tonumber(ARGV[3])
