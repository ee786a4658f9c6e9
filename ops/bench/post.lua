-- wrk script: POST the body in $BENCH_BODY_FILE (headers come from wrk -H), and stop each thread
-- after $BENCH_MAX_REQUESTS_PER_THREAD responses, so a run is bounded in requests as well as time.
-- When $BENCH_ID_PLACEHOLDER is set, each request replaces it with an id unique to this run
-- ($BENCH_RUN_NONCE), thread and request (a 12-digit counter). The first non-2xx answer of each
-- thread goes to stderr, so an error count comes with its cause.
local file = assert(io.open(os.getenv("BENCH_BODY_FILE"), "rb"))
wrk.method = "POST"
wrk.body = file:read("*a")
file:close()

local limit = tonumber(os.getenv("BENCH_MAX_REQUESTS_PER_THREAD") or "0")
local placeholder = os.getenv("BENCH_ID_PLACEHOLDER") or ""
local nonce = os.getenv("BENCH_RUN_NONCE") or "run"
local done, sent, reported = 0, 0, false
local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("thread_no", threads)
end

if placeholder ~= "" then
  local at = assert(string.find(wrk.body, placeholder, 1, true), "the body has no id placeholder")
  local head, tail = string.sub(wrk.body, 1, at - 1), string.sub(wrk.body, at + #placeholder)
  -- The whole request is formatted once per thread with a fixed-width counter (so its
  -- Content-Length never changes); each request only splices the next number in. wrk.format on
  -- every request cost the load generator CPU that the server under test shares.
  local before, after
  function init(args)
    local mark = string.rep("#", 12)
    local template = wrk.format(nil, nil, nil, head .. nonce .. "-" .. thread_no .. "-" .. mark .. tail)
    local found = assert(string.find(template, mark, 1, true))
    before, after = string.sub(template, 1, found - 1), string.sub(template, found + #mark)
  end
  function request()
    sent = sent + 1
    return before .. string.format("%012d", sent) .. after
  end
end

function response(status, headers, body)
  done = done + 1
  if status >= 300 and not reported then
    reported = true
    io.stderr:write("first non-2xx answer: ", status, " ", string.sub(body or "", 1, 300), "\n")
  end
  if limit > 0 and done >= limit then wrk.thread:stop() end
end
