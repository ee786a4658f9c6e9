-- Append events to one partition of the log, atomically with their idempotency keys and indexes.
--
-- KEYS[1] the partition's log stream        KEYS[2] the partition's "indexed up to" marker
-- ARGV[1] key prefix of the partition (with its hash tag; derived keys below share the slot)
-- ARGV[2] idempotency window (ms)   ARGV[3] partition   ARGV[4] salt
-- ARGV[5] the events, one MessagePack array (strings as msgpack str): per event its field count,
--         then its XADD fields as app/events.py `enrich` makes them: `_v 1 [id <id>] type <t>
--         source <s> ...` (the script reads the id, type and source from those fixed places).
-- One packed argument instead of ~18 per event: the server parses one string, not thousands, and
-- the client packs it in one msgspec call.
--
-- The script assigns entry ids itself (time from the server, never going backwards), so an event id
-- it makes is a UUIDv7 that encodes the entry: ms | version 7 | seq | variant | seq | partition |
-- salt. Looking such an id up needs no key; only producer-given ids get an idempotency key.
--
-- Returns a flat array: per event its entry id and the event id the script made ('' when the
-- producer gave one), then the 1-based positions of the events that were repeats (their entry id
-- is the original's).
-- Returns {"BEHIND"} without appending when more directly-XADDed entries await indexing than one
-- call indexes; the caller runs catch_up.lua and tries again, so index streams stay in log order.
local stream, marker, base = KEYS[1], KEYS[2], ARGV[1]
local window, partition, salt = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])

local last, behind = catch_up(stream, marker, base, window, 1000)
if behind then return {'BEHIND'} end

-- The shape the client sends (one array of strings and counts), read without cmsgpack where the
-- server has none (fakeredis in the unit tests).
local function unpack_flat(s)
  local byte, sub, pos = string.byte, string.sub, 1
  local function uint(width)
    local v = 0
    for i = pos, pos + width - 1 do v = v * 256 + byte(s, i) end
    pos = pos + width
    return v
  end
  local widths = {[0xcc] = 1, [0xcd] = 2, [0xce] = 4, [0xd9] = 1, [0xda] = 2, [0xdb] = 4}
  local tag = byte(s, 1); pos = 2
  local count
  if tag >= 0x90 and tag <= 0x9f then count = tag - 0x90
  elseif tag == 0xdc or tag == 0xdd then count = uint(tag == 0xdc and 2 or 4)
  else error('append.lua: the events must be a MessagePack array') end
  local out = {}
  for i = 1, count do
    tag = byte(s, pos); pos = pos + 1
    if tag <= 0x7f then out[i] = tag
    elseif tag >= 0xcc and tag <= 0xce then out[i] = uint(widths[tag])
    else
      local len
      if tag >= 0xa0 and tag <= 0xbf then len = tag - 0xa0
      elseif tag >= 0xd9 and tag <= 0xdb then len = uint(widths[tag])
      else error('append.lua: unexpected MessagePack tag ' .. tag) end
      out[i] = sub(s, pos, pos + len - 1)
      pos = pos + len
    end
  end
  return out
end

local args = cmsgpack and cmsgpack.unpack(ARGV[5]) or unpack_flat(ARGV[5])
local last_ms, last_seq = string.match(last, '^(%d+)-(%d+)$')
last_ms, last_seq = tonumber(last_ms), tonumber(last_seq)
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)

-- Numbers become text through string.format('%d'): Lua's own conversion ('..' on a number) goes
-- through a floating-point printf, which was a tenth of the script's time.
local function next_entry_id()
  if now_ms > last_ms then last_ms, last_seq = now_ms, 0 else last_seq = last_seq + 1 end
  return string.format('%d-%d', last_ms, last_seq)
end

local tail = string.format('%04x%08x', partition, salt)
local head_ms, head = -1, ''
local function uuid_of(ms, seq)
  if ms ~= head_ms then
    head_ms, head = ms, string.format('%08x-%04x-7', math.floor(ms / 65536), ms % 65536)
  end
  return string.format('%s%03x-%04x-%s', head, seq % 4096, 32768 + math.floor(seq / 4096) % 16384, tail)
end

local function append(entry_id, extra_id, first, stop)
  if extra_id then
    return redis.pcall('XADD', stream, entry_id, 'id', extra_id, unpack(args, first, stop))
  end
  return redis.pcall('XADD', stream, entry_id, unpack(args, first, stop))
end

-- For an event with the producer's id: (entry id of the original) when it is a repeat, else the
-- key to remember it under: (nil, its id key) or, when another source holds that, (nil, nil, own key).
local function repeat_of(ev_id, source)
  local id_key = base .. 'id:' .. ev_id
  local seen = redis.call('GET', id_key)
  if not seen then return nil, id_key, nil end
  local seen_entry, seen_source = string.match(seen, '^(%S+) (.*)$')
  if seen_source == source then return seen_entry, nil, nil end
  -- Another source used this id first and keeps the lookup key; this source deduplicates on a key
  -- of its own (Keys.source_event_id), so idempotency stays per (source, id).
  local own_key = base .. 'ids:' .. source .. ' ' .. ev_id
  local own = redis.call('GET', own_key)
  if own then return own, nil, nil end
  return nil, nil, own_key
end

local runs = new_runs(base)
local out, repeats = {}, {}
local pos, n = 1, 0
while pos <= #args do
  n = n + 1
  local first = pos + 1
  pos = first + args[pos]
  -- enrich's order: _v 1 [id <id>] type <t> source <s> ...
  local ev_id, at = '', first + 3
  if args[first + 2] == 'id' then ev_id, at = args[first + 3], first + 5 end
  local ev_type, source = args[at], args[at + 2]
  local seen_entry, id_key, own_key
  if ev_id ~= '' then seen_entry, id_key, own_key = repeat_of(ev_id, source) end
  if seen_entry then
    out[#out + 1] = seen_entry
    out[#out + 1] = ''
    repeats[#repeats + 1] = n
  else
    local entry_id = next_entry_id()
    local made = ev_id == '' and uuid_of(last_ms, last_seq) or nil
    local ok = append(entry_id, made, first, pos - 1)
    if type(ok) == 'table' and ok.err then
      -- The stream's last id is past what this script saw (an entry added and deleted directly):
      -- let the server pick the id; a made event id then needs a lookup key.
      if made then
        entry_id = redis.call('XADD', stream, '*', 'id', made, unpack(args, first, pos - 1))
      else
        entry_id = redis.call('XADD', stream, '*', unpack(args, first, pos - 1))
      end
      last_ms, last_seq = string.match(entry_id, '^(%d+)-(%d+)$')
      last_ms, last_seq = tonumber(last_ms), tonumber(last_seq)
      if made then id_key = base .. 'id:' .. made end
    end
    if own_key then redis.call('SET', own_key, entry_id, 'PX', window)
    elseif id_key then redis.call('SET', id_key, entry_id .. ' ' .. source, 'PX', window) end
    add_to_runs(runs, entry_id, ev_type, source)
    last = entry_id
    out[#out + 1] = entry_id
    out[#out + 1] = made or ''
  end
end
close_runs(runs)
redis.call('SET', marker, last)
for i = 1, #repeats do out[#out + 1] = repeats[i] end
return out
