-- Move one delivery to the dead letters: write it, record the attempt, ack it, unschedule it.
-- All or nothing, so an event is never both acknowledged and missing from the dead letters.
-- KEYS[1] stream it was read from (log or replay), KEYS[2] dead-letter stream, KEYS[3] retry
-- schedule, KEYS[4] the event's attempt list
-- ARGV[1] group, ARGV[2] entry id in KEYS[1], ARGV[3] schedule member, ARGV[4] attempt record
-- (JSON), ARGV[5] attempt-list TTL (s), then the dead letter's fields.
redis.call('XADD', KEYS[2], '*', unpack(ARGV, 6))
redis.call('RPUSH', KEYS[4], ARGV[4])
redis.call('LTRIM', KEYS[4], -50, -1)
redis.call('EXPIRE', KEYS[4], tonumber(ARGV[5]))
redis.call('ZREM', KEYS[3], ARGV[3])
return redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
