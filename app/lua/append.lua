-- Append events to one partition of the log, atomically with their idempotency keys and indexes.
--
-- KEYS[1] the partition's log stream        KEYS[2] the partition's "indexed up to" marker
-- ARGV[1] key prefix of the partition (with its hash tag; derived keys below share the slot)
-- ARGV[2] idempotency window in ms          ARGV[3] number of events
-- then per event: id, source, type, generated ("1" when EventFlow made the id), nfields, fields...
--
-- Returns a flat array: per event its entry id and "1" when it was a repeat (not appended).
-- Returns {"BEHIND"} without appending when more directly-XADDed entries await indexing than one
-- call indexes; the caller runs catch_up.lua and tries again, so index streams stay in log order.
local stream, marker, base = KEYS[1], KEYS[2], ARGV[1]
local window = tonumber(ARGV[2])

local last, behind = catch_up(stream, marker, base, window, 1000)
if behind then return {'BEHIND'} end

local out = {}
local pos = 4
for _ = 1, tonumber(ARGV[3]) do
  local ev_id, source, ev_type, generated = ARGV[pos], ARGV[pos + 1], ARGV[pos + 2], ARGV[pos + 3]
  local nfields = tonumber(ARGV[pos + 4])
  local first = pos + 5
  pos = first + nfields
  local id_key = base .. 'id:' .. ev_id
  local seen = generated ~= '1' and redis.call('GET', id_key)
  local repeat_of, own_key
  if seen then
    local seen_entry, seen_source = string.match(seen, '^(%S+) (.*)$')
    if seen_source == source then
      repeat_of = seen_entry
    else
      -- Another source used this id first and keeps the lookup key; this source deduplicates on a
      -- key of its own (Keys.source_event_id), so idempotency stays per (source, id).
      own_key = base .. 'ids:' .. source .. ' ' .. ev_id
      repeat_of = redis.call('GET', own_key)
    end
  end
  if repeat_of then
    out[#out + 1] = repeat_of
    out[#out + 1] = '1'
  else
    local entry_id = redis.call('XADD', stream, '*', unpack(ARGV, first, pos - 1))
    if own_key then redis.call('SET', own_key, entry_id, 'PX', window)
    elseif not seen then redis.call('SET', id_key, entry_id .. ' ' .. source, 'PX', window) end
    redis.call('XADD', base .. 'idx:type:' .. ev_type, entry_id, '_', '')
    redis.call('XADD', base .. 'idx:src:' .. source, entry_id, '_', '')
    last = entry_id
    out[#out + 1] = entry_id
    out[#out + 1] = '0'
  end
end
redis.call('SET', marker, last)
return out
