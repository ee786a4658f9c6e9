-- Per-producer rate limit: GCRA (the generic cell rate algorithm, a leaky bucket kept as one number).
-- KEYS[1]: the producer's key, holding its "theoretical arrival time" (TAT) in microseconds of the
-- server's clock, so every web process shares one limit. ARGV[1]: microseconds per event (1e6 / rate);
-- ARGV[2]: burst tolerance in microseconds; ARGV[3]: events in this request.
-- Returns 0 when the events are allowed (and counted), else the microseconds to wait before a retry.
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then
  tat = now
end
local new_tat = tat + interval * cost
-- A request within the burst passes. So does one larger than the whole burst when the bucket is idle
-- (tat == now): a batch bigger than a second's allowance is never refused for good; the debt it
-- leaves throttles what follows, so the average rate holds.
if tat > now and new_tat - tolerance > now then
  return math.ceil(math.min(new_tat - tolerance, tat) - now)
end
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
return 0
