-- Take deliveries whose backoff has expired out of the retry schedule and claim them, atomically,
-- so two workers never both retry the same entry.
-- KEYS[1] log stream, KEYS[2] the group's replay stream, KEYS[3] the group's retry schedule
-- ARGV[1] group, ARGV[2] consumer, ARGV[3] now (ms), ARGV[4] how many
-- Returns {member, entry} pairs; entry is the claimed [id, fields], or 'L' when the entry was
-- deleted or trimmed while it waited (lost), or 'N' when it is no longer pending (handled elsewhere).
local due = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', ARGV[3], 'LIMIT', 0, tonumber(ARGV[4]))
local out = {}
for _, member in ipairs(due) do
  redis.call('ZREM', KEYS[3], member)
  local id = string.sub(member, 3)
  local stream = KEYS[1]
  if string.sub(member, 1, 1) == 'r' then stream = KEYS[2] end
  local claimed = redis.call('XCLAIM', stream, ARGV[1], ARGV[2], 0, id)[1]
  if not claimed then
    if #redis.call('XRANGE', stream, id, id) == 0 then claimed = 'L' else claimed = 'N' end
  end
  out[#out + 1] = {member, claimed}
end
return out
