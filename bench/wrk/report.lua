-- report.lua: the part every bench script shares (each loads it with dofile).
--
-- Every thread counts the answers it got by status in `statuses`, and keeps what the
-- bench checks afterwards in `records` (one line each) and in tallies (key -> count,
-- one table per name the script lists in `tally_names`; see tally()). done() runs once,
-- after all threads have stopped, and writes wrk's summary, the latency percentiles and
-- every thread's counts, records and tallies to the file named by BENCH_OUT, one fact a
-- line:
--   summary <requests> <duration us> <bytes>
--   errors <connect> <read> <write> <status> <timeout>
--   latency <p50 us> <p90 us> <p99 us> <max us> <mean us>
--   status <code> <count>
--   sent <count>               requests the thread's request() built
--   tally <name> <key> <count>
--   ...                        the thread's own records (see the script)
--
-- wrk calls request() once before the run to check it (script_verify_request): that
-- request is counted in `sent` but never leaves, so `sent` may be one above what went out.

statuses = {}
records = {}
sent = 0

local threads = {}

function setup(thread)
  thread:set("thread_id", #threads)
  threads[#threads + 1] = thread
end

-- Every script's init() ends with this: once the last thread has built its requests,
-- it creates the file BENCH_STARTED, and the bench counts the phase's CPU from then for
-- the phase's duration (wrk starts its clock right after the last init).
function init_done()
  local path = os.getenv("BENCH_STARTED")  -- (unset when a script is run by hand)
  if path and thread_id == tonumber(os.getenv("BENCH_THREADS") or "1") - 1 then
    assert(io.open(path, "w")):close()
  end
end

function count_status(status)
  statuses[status] = (statuses[status] or 0) + 1
end

-- Tallies are flat global tables (tally_<name>): wrk's thread:get copies a table but
-- not a table nested in one (its copy pops the wrong stack slot: "invalid key to 'next'").
local tallies = {}  -- name -> its global table, found without building its name per call
for _, name in ipairs(tally_names or {}) do
  tallies[name] = {}
  _G["tally_" .. name] = tallies[name]
end

function tally(name, key)
  local t = tallies[name]
  t[key] = (t[key] or 0) + 1
end

-- The first string value that follows `quoted_name` (such as '"id":"') in an answer's
-- body, "?" if none: plain finds, where a pattern would be tried at every position.
function member(body, quoted_name)
  local at = body:find(quoted_name, 1, true)
  if not at then
    return "?"
  end
  local from = at + #quoted_name
  local to = body:find('"', from, true)
  return to and body:sub(from, to - 1) or "?"
end

-- Customer tokens, one a line; the line number (from 0) is the customer's index.
function read_tokens()
  local auth = {}
  for token in io.lines(os.getenv("BENCH_TOKENS")) do
    auth[#auth + 1] = "Bearer " .. token
  end
  return auth
end

function done(summary, latency, requests)
  local out = assert(io.open(os.getenv("BENCH_OUT"), "w"))
  local e = summary.errors
  out:write(string.format("summary %d %d %d\n", summary.requests, summary.duration, summary.bytes))
  out:write(string.format("errors %d %d %d %d %d\n", e.connect, e.read, e.write, e.status,
    e.timeout))
  out:write(string.format("latency %d %d %d %d %.1f\n", latency:percentile(50),
    latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("statuses")) do
      out:write(string.format("status %d %d\n", status, n))
    end
    out:write(string.format("sent %d\n", thread:get("sent")))
    for _, name in ipairs(tally_names or {}) do
      for key, n in pairs(thread:get("tally_" .. name)) do
        out:write(string.format("tally %s %s %d\n", name, key, n))
      end
    end
    for _, line in ipairs(thread:get("records")) do
      out:write(line, "\n")
    end
  end
  out:close()
end
