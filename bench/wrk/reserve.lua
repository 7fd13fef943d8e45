-- reserve.lua: POST /reservations for one random seat of BENCH_EVENT (seats are
-- s000000000000 .. s<BENCH_SEATS - 1>, 12 digits) as a random customer (from a list of
-- PREBUILT random requests, sent in turn).
--
-- wrk does not tell which request an answer belongs to, so the seat is read back from
-- the answer: a 201 carries the reservation (id and seatIds), a 409 the conflicting
-- seatIds. Records and tallies:
--   ok <seat> <reservation id>     each 201
--   tally conflict <seat> <n>      409s per seat
--   tally asked <seat> <n>         requests built per seat (the bench subtracts the
--                                  answered ones to know which were cut off unanswered
--                                  when the run ended)

tally_names = {"asked", "conflict"}
dofile(os.getenv("BENCH_WRK_DIR") .. "/report.lua")

local event = os.getenv("BENCH_EVENT")
local seat_count = tonumber(os.getenv("BENCH_SEATS"))
-- Requests are built once, in init(), and request() hands them out in turn: building
-- one per call (string.format and wrk.format) cost wrk about as much CPU as the answer
-- it waits for, CPU the server then lacks on a 2-core machine. GET /healthz is a
-- prebuilt request too, so both phases pay the load generator alike.
local PREBUILT = 50000
local prebuilt = {}
local prebuilt_seat = {}
local position = 0

function init(args)
  math.randomseed(os.time() * 1000 + thread_id * 7919)
  local headers = {}
  for i, auth in ipairs(read_tokens()) do
    headers[i] = {["Authorization"] = auth, ["Content-Type"] = "application/json"}
  end
  for i = 1, PREBUILT do
    local seat = string.format("s%012d", math.random(0, seat_count - 1))
    local body = '{"eventId":"' .. event .. '","seatId":"' .. seat .. '"}'
    prebuilt[i] = wrk.format("POST", "/reservations", headers[math.random(#headers)], body)
    prebuilt_seat[i] = seat
  end
  init_done()
end

function request()
  position = position % PREBUILT + 1
  sent = sent + 1
  tally("asked", prebuilt_seat[position])
  return prebuilt[position]
end

local function first_seat(body)
  return member(body, '"seatIds":["')
end

function response(status, headers, body)
  count_status(status)
  if status == 201 then
    local id = member(body, '"id":"')
    records[#records + 1] = "ok " .. first_seat(body) .. " " .. id
  elseif status == 409 then
    tally("conflict", first_seat(body))
  end
end
