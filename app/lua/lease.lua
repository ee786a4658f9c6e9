-- A lease held by one process: take, renew or release it, only when it is free or already ours.
-- KEYS[1] the lease key   ARGV[1] holder token   ARGV[2] 'take' | 'renew' | 'release'   ARGV[3] ttl (ms)
-- Returns 1 when the operation happened, 0 when someone else holds the lease.
local holder = redis.call('GET', KEYS[1])
if ARGV[2] == 'take' then
  if holder and holder ~= ARGV[1] then return 0 end
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
  return 1
end
if holder ~= ARGV[1] then return 0 end
if ARGV[2] == 'renew' then redis.call('PEXPIRE', KEYS[1], ARGV[3]) else redis.call('DEL', KEYS[1]) end
return 1
