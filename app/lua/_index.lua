-- Shared prelude of the log scripts (prepended by app/scripts.py): keep the type and source indexes
-- and the event-id lookup keys. Index streams reuse the log's entry ids, so they stay in log order.
local function index_entry(base, window, entry_id, fields)
  local ev_type, source, ev_id
  for i = 1, #fields, 2 do
    local k = fields[i]
    if k == 'type' then ev_type = fields[i + 1]
    elseif k == 'source' then source = fields[i + 1]
    elseif k == 'id' then ev_id = fields[i + 1] end
  end
  if ev_type then redis.call('XADD', base .. 'idx:type:' .. ev_type, entry_id, '_', '') end
  if source then redis.call('XADD', base .. 'idx:src:' .. source, entry_id, '_', '') end
  if ev_id then
    redis.call('SET', base .. 'id:' .. ev_id, entry_id .. ' ' .. (source or ''), 'PX', window, 'NX')
  end
end

-- Index up to `limit` entries XADDed straight into the stream since the marker.
-- Returns the new marker and whether entries still wait after it.
local function catch_up(stream, marker, base, window, limit)
  local last = redis.call('GET', marker) or '0-0'
  local tip = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)[1]
  if not tip or tip[1] == last then return last, false end
  local entries = redis.call('XRANGE', stream, '(' .. last, '+', 'COUNT', limit)
  for _, entry in ipairs(entries) do index_entry(base, window, entry[1], entry[2]) end
  if #entries > 0 then
    last = entries[#entries][1]
    redis.call('SET', marker, last)
  end
  return last, last ~= tip[1]
end
