-- reserve.lua: POST /reservations for one random seat of BENCH_EVENT (seats are
-- s000000000000 .. s<BENCH_SEATS - 1>, 12 digits) as a random customer.
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
local headers = {}

function init(args)
  math.randomseed(os.time() * 1000 + thread_id * 7919)
  for i, auth in ipairs(read_tokens()) do
    headers[i] = {["Authorization"] = auth, ["Content-Type"] = "application/json"}
  end
end

function request()
  local seat = string.format("s%012d", math.random(0, seat_count - 1))
  sent = sent + 1
  tally("asked", seat)
  local body = '{"eventId":"' .. event .. '","seatId":"' .. seat .. '"}'
  return wrk.format("POST", "/reservations", headers[math.random(#headers)], body)
end

local function first_seat(body)
  return body:match('"seatIds":%["([^"]+)"') or "?"
end

function response(status, headers, body)
  count_status(status)
  if status == 201 then
    local id = body:match('"id":"([^"]+)"') or "?"
    records[#records + 1] = "ok " .. first_seat(body) .. " " .. id
  elseif status == 409 then
    tally("conflict", first_seat(body))
  end
end
