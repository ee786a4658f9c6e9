-- Read log entries through an index stream (see _index.lua: each index entry covers a run of
-- consecutive log entries, id = first entry, field l = last entry), in one round trip.
-- KEYS[1] log stream, KEYS[2] index stream (type or source)
-- ARGV[1] upper bound, ARGV[2] lower bound (XRANGE syntax: '+', '-', '123-0', '(123-0')
-- ARGV[3] entries wanted, ARGV[4] source to match ('' = any), ARGV[5] '1' = newest first,
-- ARGV[6] most log entries to look at in this call (a source filter may skip many).
-- Returns {resume, entry, entry, ...}: resume is the log position everything up to (newest first:
-- down to) has been examined, to continue from with an exclusive bound; '' when the index ran out.
local stream, index = KEYS[1], KEYS[2]
local hi, lo, want, source = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local newest_first, budget = ARGV[5] == '1', tonumber(ARGV[6])
local out = {''}
local found = 0

local function bare(bound) return (string.gsub(bound, '^%(', '')) end

-- The tighter of a query bound and a run's edge.
local function upper(bound, edge)
  if bound == '+' or less(edge, bare(bound)) then return edge end
  return bound
end

local function lower(bound, edge)
  if bound == '-' or less(bare(bound), edge) then return edge end
  return bound
end

-- The index entry of the run that may straddle the lower bound (its first entry is below it).
local function straddling()
  if lo == '-' then return nil end
  local at = bare(lo)
  if string.sub(lo, 1, 1) ~= '(' then at = '(' .. at end
  return redis.call('XREVRANGE', index, at, '-', 'COUNT', 1)[1]
end

local function matches(entry)
  if source == '' then return true end
  local f = entry[2]
  for i = 1, #f, 2 do if f[i] == 'source' then return f[i + 1] == source end end
  return false
end

-- Expand one run within the bounds; false when the call must stop (enough found, or budget spent).
local function expand(run)
  local top, bottom = upper(hi, run[2][2]), lower(lo, run[1])
  while true do
    local n = math.min(budget, math.max(want - found, 64))
    if n <= 0 then return false end
    local entries
    if newest_first then entries = redis.call('XREVRANGE', stream, top, bottom, 'COUNT', n)
    else entries = redis.call('XRANGE', stream, bottom, top, 'COUNT', n) end
    budget = budget - #entries
    for _, entry in ipairs(entries) do
      out[1] = entry[1]
      if matches(entry) then
        out[#out + 1] = entry
        found = found + 1
        if found >= want then return false end
      end
    end
    if #entries < n then
      out[1] = newest_first and bare(bottom) or bare(top)
      return true
    end
    if newest_first then top = '(' .. entries[#entries][1] else bottom = '(' .. entries[#entries][1] end
  end
end

if not newest_first then
  local run = straddling()
  if run and not expand(run) then return out end
end
while budget > 0 do
  local chunk = 64
  local runs
  if newest_first then runs = redis.call('XREVRANGE', index, hi, lo, 'COUNT', chunk)
  else runs = redis.call('XRANGE', index, lo, hi, 'COUNT', chunk) end
  for _, run in ipairs(runs) do
    if not expand(run) then return out end
  end
  if #runs < chunk then
    if newest_first then
      local run = straddling()
      if run and not expand(run) then return out end
    end
    out[1] = ''
    return out
  end
  if newest_first then hi = '(' .. runs[#runs][1] else lo = '(' .. runs[#runs][1] end
end
return out
