-- Read log entries through an index stream, newest first or oldest first, in one round trip.
-- KEYS[1] log stream, KEYS[2] index stream (type or source)
-- ARGV[1] upper bound, ARGV[2] lower bound (XRANGE syntax: '+', '-', '123-0', '(123-0')
-- ARGV[3] entries wanted, ARGV[4] source to match ('' = any), ARGV[5] '1' = newest first,
-- ARGV[6] most index entries to look at in this call.
-- Returns {last index id looked at ('' when the index ran out), entry, entry, ...}.
local stream, index = KEYS[1], KEYS[2]
local hi, lo, want, source = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local newest_first, budget = ARGV[5] == '1', tonumber(ARGV[6])
local out = {''}
local found = 0
while found < want and budget > 0 do
  local chunk = math.min(budget, math.max(want - found, 64))
  local ids
  if newest_first then ids = redis.call('XREVRANGE', index, hi, lo, 'COUNT', chunk)
  else ids = redis.call('XRANGE', index, lo, hi, 'COUNT', chunk) end
  budget = budget - #ids
  for _, item in ipairs(ids) do
    local entry = redis.call('XRANGE', stream, item[1], item[1])[1]
    out[1] = item[1]
    if entry then
      local ok = source == ''
      if not ok then
        local f = entry[2]
        for i = 1, #f, 2 do if f[i] == 'source' then ok = f[i + 1] == source; break end end
      end
      if ok then
        out[#out + 1] = entry
        found = found + 1
        if found == want then return out end
      end
    end
  end
  if #ids < chunk then out[1] = ''; return out end
  if newest_first then hi = '(' .. ids[#ids][1] else lo = '(' .. ids[#ids][1] end
end
return out
