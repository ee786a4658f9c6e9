-- Move dead letters back to the replay stream of the group they failed in (and only that group).
-- Each replay adds a "replayed" record (attempt 0: the replay gets a fresh attempt budget) to the
-- event's attempt list in that group, so its lifecycle shows it.
-- KEYS[1] dead-letter stream; ARGV[1] partition key prefix (replay keys share its slot),
-- ARGV[2] now (ms), ARGV[3] attempt-list TTL (s), ARGV[4] most values to XADD here,
-- ARGV[5..] dead-letter entry ids.
-- Returns the number replayed (missing ids are skipped) and the ids of dead letters with more fields
-- than one call can pass to XADD (Lua's ~8,000 values), left for the caller to replay in MULTI/EXEC.
local replayed, wide = 0, {}
for i = 5, #ARGV do
  local entry = redis.call('XRANGE', KEYS[1], ARGV[i], ARGV[i])[1]
  if entry then
    local fields, keep, group, original = entry[2], {}, nil, nil
    for j = 1, #fields, 2 do
      local k, v = fields[j], fields[j + 1]
      if k == '_group' then group = v
      elseif k == '_entry' then original = v; keep[#keep + 1] = k; keep[#keep + 1] = v
      elseif string.sub(k, 1, 1) ~= '_' or k == '_v' or k == '_x' then
        keep[#keep + 1] = k
        keep[#keep + 1] = v
      end
    end
    if group and original and #keep > tonumber(ARGV[4]) then
      wide[#wide + 1] = ARGV[i]
    elseif group and original then
      keep[#keep + 1] = '_replay'
      keep[#keep + 1] = 'dead-letter'
      redis.call('XADD', ARGV[1] .. 'replay:' .. group, '*', unpack(keep))
      redis.call('XDEL', KEYS[1], ARGV[i])
      local att = ARGV[1] .. 'att:' .. group .. ':' .. original
      redis.call('RPUSH', att, '{"attempt":0,"outcome":"replayed","at_ms":' .. ARGV[2] .. '}')
      redis.call('EXPIRE', att, tonumber(ARGV[3]))
      replayed = replayed + 1
    end
  end
end
return {replayed, wide}
