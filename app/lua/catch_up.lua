-- Index up to ARGV[3] entries XADDed straight into the stream since the last indexed one.
-- KEYS[1] stream, KEYS[2] marker; ARGV[1] partition key prefix, ARGV[2] idempotency window (ms).
-- Returns 1 while entries still wait after this call, 0 when caught up.
local _, behind = catch_up(KEYS[1], KEYS[2], ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]))
if behind then return 1 end
return 0
