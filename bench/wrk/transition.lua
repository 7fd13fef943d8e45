-- transition.lua: POST /reservations/{id}/<BENCH_ACTION> (confirm or cancel) on
-- reservations the bench made beforehand, each once, as its owner.
--
-- BENCH_ITEMS has one reservation a line: "<reservation id> <customer index>". Thread t
-- of BENCH_THREADS takes lines t, t + BENCH_THREADS, ... in order. A thread that runs
-- out starts its list again (those answers are "already done" replays, cheaper than a
-- real transition), and the bench says so. Records and tallies:
--   ok <reservation id> <state>    each 200
--   tally wrapped laps <n>         times a thread started its list again

tally_names = {"wrapped"}
dofile(os.getenv("BENCH_WRK_DIR") .. "/report.lua")

local action = os.getenv("BENCH_ACTION")
local items = {}
local position = 0

function init(args)
  local threads = tonumber(os.getenv("BENCH_THREADS"))
  local headers = {}
  for i, auth in ipairs(read_tokens()) do
    headers[i] = {["Authorization"] = auth}
  end
  local line_number = 0
  -- Requests are built here, once, as reserve.lua does (and GET /healthz is): building
  -- one per call with wrk.format cost the load generator CPU the server then lacks.
  for line in io.lines(os.getenv("BENCH_ITEMS")) do
    if line_number % threads == thread_id then
      local id, customer = line:match("^(%S+) (%d+)$")
      local path = "/reservations/" .. id .. "/" .. action
      items[#items + 1] = wrk.format("POST", path, headers[customer + 1])
    end
    line_number = line_number + 1
  end
  init_done()
end

function request()
  position = position + 1
  if position > #items then
    position = 1
    tally("wrapped", "laps")
  end
  sent = sent + 1
  return items[position]
end

function response(status, headers, body)
  count_status(status)
  if status == 200 then
    local id = member(body, '"id":"')
    local state = member(body, '"state":"')
    records[#records + 1] = "ok " .. id .. " " .. state
  end
end
