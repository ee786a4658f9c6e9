-- A worker process's claim on its consumer name: the name's heartbeat key, whose JSON body carries the
-- random token of the process that holds it. 'beat' takes the claim when it is free and renews it while
-- it is ours; 'release' deletes it only if it is still ours. One key: it runs on a cluster too.
-- KEYS[1] the heartbeat key   ARGV[1] this process's token   ARGV[2] 'beat' | 'release'
-- ARGV[3] the JSON body to write   ARGV[4] ttl (ms)
-- Returns nil when the claim is ours (or, after 'release', gone), else {the holder's body, its ttl in ms}.
local current = redis.call('GET', KEYS[1])
if current then
  local ok, body = pcall(cjson.decode, current)
  if not (ok and type(body) == 'table' and body.token == ARGV[1]) then
    return {current, redis.call('PTTL', KEYS[1])}
  end
end
if ARGV[2] == 'beat' then
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
elseif current then
  redis.call('DEL', KEYS[1])
end
return false
