-- Trim the oldest entries of a stream (retention), never past its safe point, and prune the index
-- runs that end before the new first entry, atomically.
--
-- KEYS[1] the stream (a partition's log, or a group's replay stream)
-- KEYS[2..] index streams that may hold runs of the entries being trimmed (see _index.lua)
-- ARGV[1] the wanted trim point: entries with smaller ids go ('' = as far as the safe point allows)
--
-- The safe point is the minimum over the stream's consumer groups of the oldest entry still pending
-- and the entry after the last one delivered: an entry is trimmed only when every group has it
-- delivered and acknowledged. Computed here, in the same atomic step as XTRIM, so a group created or
-- rewound meanwhile is honoured.
-- Returns {trim point used, group that held it back ('' = none), entries trimmed}.
local stream = KEYS[1]

local function after(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return ms .. '-' .. tostring(tonumber(seq) + 1)
end

local point, holder = ARGV[1], ''
if redis.call('EXISTS', stream) == 0 then return {'', '', 0} end
for _, group in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
  local name, last
  for i = 1, #group, 2 do
    if group[i] == 'name' then name = group[i + 1]
    elseif group[i] == 'last-delivered-id' then last = group[i + 1] end
  end
  local safe = after(last)
  local pending = redis.call('XPENDING', stream, name)
  if tonumber(pending[1]) > 0 and less(pending[2], safe) then safe = pending[2] end
  if point == '' or less(safe, point) then point, holder = safe, name end
end
if point == '' then return {'', '', 0} end  -- no group reads this stream and no wanted point

local trimmed = redis.call('XTRIM', stream, 'MINID', point)

-- Runs of one index never overlap and are in log order, so the runs ending before the point are a
-- prefix of the index: cut it at the first run that ends at or after the point (a run straddling
-- the point stays; queries clamp to the entries that exist).
local function prune(index)
  local from = '-'
  while true do
    local runs = redis.call('XRANGE', index, from, '+', 'COUNT', 100)
    for _, run in ipairs(runs) do
      local f, last = run[2], run[1]
      for i = 1, #f, 2 do if f[i] == 'l' then last = f[i + 1] end end
      if not less(last, point) then
        redis.call('XTRIM', index, 'MINID', run[1])
        return
      end
    end
    if #runs < 100 then
      redis.call('DEL', index)
      return
    end
    from = '(' .. runs[#runs][1]
  end
end

for i = 2, #KEYS do prune(KEYS[i]) end
return {point, holder, trimmed}
