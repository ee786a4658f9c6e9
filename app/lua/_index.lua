-- Shared prelude of the log scripts (prepended by app/scripts.py).
--
-- Indexes: a type index and a source index per partition, each a stream whose entries cover *runs*
-- of consecutive log entries with that type (source): the index entry's id is the run's first entry
-- id and its field `l` the run's last. Entries appended by one script call are contiguous in the log,
-- so a 1000-event batch of one type costs one index entry, not 1000.

-- Collects runs while a script appends, and writes one index entry per run. Keys are built only
-- when a run starts (comparing the type and source themselves is cheaper than building keys).
local function new_runs(base)
  return {base = base, type = nil, type_first = nil, src = nil, src_first = nil, last = nil}
end

-- One index entry for the run first..last. The index can reach that far already when the marker
-- was lost (deleted by hand, say) and catch-up reads entries it had indexed: then only the part
-- after the index's last run is added, and nothing when that run covers this one.
local function add_run(key, first, last)
  local added = redis.pcall('XADD', key, first, 'l', last)
  if type(added) ~= 'table' or not added.err then return end
  local top = redis.call('XREVRANGE', key, '+', '-', 'COUNT', 1)[1]
  if not top then return redis.call('XADD', key, first, 'l', last) end  -- another error: raise it
  local covered_ms, covered_seq = string.match(top[2][2], '^(%d+)-(%d+)$')
  local last_ms, last_seq = string.match(last, '^(%d+)-(%d+)$')
  covered_ms, covered_seq, last_ms, last_seq =
    tonumber(covered_ms), tonumber(covered_seq), tonumber(last_ms), tonumber(last_seq)
  if covered_ms > last_ms or (covered_ms == last_ms and covered_seq >= last_seq) then return end
  redis.call('XADD', key, string.format('%d-%d', covered_ms, covered_seq + 1), 'l', last)
end

local function close_type(r)
  if r.type then add_run(r.base .. 'idx:type:' .. r.type, r.type_first, r.last) end
  r.type = nil
end

local function close_src(r)
  if r.src then add_run(r.base .. 'idx:src:' .. r.src, r.src_first, r.last) end
  r.src = nil
end

local function add_to_runs(r, entry_id, ev_type, source)
  if ev_type ~= r.type then close_type(r); r.type, r.type_first = ev_type, entry_id end
  if source ~= r.src then close_src(r); r.src, r.src_first = source, entry_id end
  r.last = entry_id
end

local function close_runs(r)
  close_type(r)
  close_src(r)
end

-- Index up to `limit` entries XADDed straight into the stream since the marker (and keep their
-- event-id lookup keys). Returns the new marker and whether entries may still wait after it.
-- Only what lies after the marker counts, never the stream's newest entry: that one can be older
-- than the marker (deleted by hand with XDEL), and nothing will ever come to close that gap.
local function catch_up(stream, marker, base, window, limit)
  local last = redis.call('GET', marker) or '0-0'
  if last == '18446744073709551615-18446744073709551615' then return last, false end  -- nothing can follow
  local entries = redis.call('XRANGE', stream, '(' .. last, '+', 'COUNT', limit)
  if #entries == 0 then return last, false end
  local runs = new_runs(base)
  for _, entry in ipairs(entries) do
    local fields, ev_type, source, ev_id = entry[2], nil, nil, nil
    for i = 1, #fields, 2 do
      local k = fields[i]
      if k == 'type' then ev_type = fields[i + 1]
      elseif k == 'source' then source = fields[i + 1]
      elseif k == 'id' then ev_id = fields[i + 1] end
    end
    add_to_runs(runs, entry[1], ev_type, source)
    if ev_id then
      redis.call('SET', base .. 'id:' .. ev_id, entry[1] .. ' ' .. (source or ''), 'PX', window, 'NX')
    end
  end
  close_runs(runs)
  last = entries[#entries][1]
  redis.call('SET', marker, last)
  return last, #entries == limit
end
