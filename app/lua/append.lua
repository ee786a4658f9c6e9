-- Append events to one partition of the log, atomically with their idempotency keys and indexes.
--
-- KEYS[1] the partition's log stream        KEYS[2] the partition's "indexed up to" marker
-- ARGV[1] key prefix of the partition (with its hash tag; derived keys below share the slot)
-- ARGV[2] idempotency window (ms)   ARGV[3] number of events   ARGV[4] partition   ARGV[5] salt
-- then per event: id ('' = EventFlow makes one), source, type, nfields, fields...
--
-- The script assigns entry ids itself (time from the server, never going backwards), so an event id
-- it makes is a UUIDv7 that encodes the entry: ms | version 7 | seq | variant | seq | partition |
-- salt. Looking such an id up needs no key; only producer-given ids get an idempotency key.
--
-- Returns a flat array: per event its entry id, its event id and "1" when it was a repeat.
-- Returns {"BEHIND"} without appending when more directly-XADDed entries await indexing than one
-- call indexes; the caller runs catch_up.lua and tries again, so index streams stay in log order.
local stream, marker, base = KEYS[1], KEYS[2], ARGV[1]
local window, partition, salt = tonumber(ARGV[2]), tonumber(ARGV[4]), tonumber(ARGV[5])

local last, behind = catch_up(stream, marker, base, window, 1000)
if behind then return {'BEHIND'} end

local last_ms, last_seq = string.match(last, '^(%d+)-(%d+)$')
last_ms, last_seq = tonumber(last_ms), tonumber(last_seq)
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)

local function next_entry_id()
  if now_ms > last_ms then last_ms, last_seq = now_ms, 0 else last_seq = last_seq + 1 end
  return last_ms .. '-' .. last_seq
end

local tail = string.format('%04x%08x', partition, salt)
local head_ms, head = -1, ''
local function uuid_of(ms, seq)
  if ms ~= head_ms then
    head_ms, head = ms, string.format('%08x-%04x-7', math.floor(ms / 65536), ms % 65536)
  end
  return head .. string.format('%03x-%04x-', seq % 4096, 32768 + math.floor(seq / 4096) % 16384) .. tail
end

local function append(entry_id, extra_id, first, stop)
  if extra_id then
    return redis.pcall('XADD', stream, entry_id, 'id', extra_id, unpack(ARGV, first, stop))
  end
  return redis.pcall('XADD', stream, entry_id, unpack(ARGV, first, stop))
end

local runs = new_runs(base)
local out = {}
local pos = 6
for _ = 1, tonumber(ARGV[3]) do
  local ev_id, source, ev_type = ARGV[pos], ARGV[pos + 1], ARGV[pos + 2]
  local first = pos + 4
  pos = first + tonumber(ARGV[pos + 3])
  local repeat_of, own_key, id_key, seen
  if ev_id ~= '' then
    id_key = base .. 'id:' .. ev_id
    seen = redis.call('GET', id_key)
    if seen then
      local seen_entry, seen_source = string.match(seen, '^(%S+) (.*)$')
      if seen_source == source then
        repeat_of = seen_entry
      else
        -- Another source used this id first and keeps the lookup key; this source deduplicates on
        -- a key of its own (Keys.source_event_id), so idempotency stays per (source, id).
        own_key = base .. 'ids:' .. source .. ' ' .. ev_id
        repeat_of = redis.call('GET', own_key)
      end
    end
  end
  if repeat_of then
    out[#out + 1] = repeat_of
    out[#out + 1] = ev_id
    out[#out + 1] = '1'
  else
    local entry_id = next_entry_id()
    local made = ev_id == '' and uuid_of(last_ms, last_seq) or nil
    local ok = append(entry_id, made, first, pos - 1)
    if type(ok) == 'table' and ok.err then
      -- The stream's last id is past what this script saw (an entry added and deleted directly):
      -- let the server pick the id; a made event id then needs a lookup key.
      if made then
        entry_id = redis.call('XADD', stream, '*', 'id', made, unpack(ARGV, first, pos - 1))
      else
        entry_id = redis.call('XADD', stream, '*', unpack(ARGV, first, pos - 1))
      end
      last_ms, last_seq = string.match(entry_id, '^(%d+)-(%d+)$')
      last_ms, last_seq = tonumber(last_ms), tonumber(last_seq)
      if made then id_key, seen = base .. 'id:' .. made, nil end
    end
    if own_key then redis.call('SET', own_key, entry_id, 'PX', window)
    elseif id_key and not seen then redis.call('SET', id_key, entry_id .. ' ' .. source, 'PX', window) end
    add_to_runs(runs, entry_id, ev_type, source)
    last = entry_id
    out[#out + 1] = entry_id
    out[#out + 1] = made or ev_id
    out[#out + 1] = '0'
  end
end
close_runs(runs)
redis.call('SET', marker, last)
return out
