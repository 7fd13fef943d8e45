-- seat_page.lua: read-only. One page of an event's seats with their status.
--
-- KEYS[1..7] the event's keys in the order of common.lua's event_keys: meta, seats,
--            claims, reservations, holds, customers, log (seats are ordered by id)
--
-- ARGV[1] cursor: the last seat id of the previous page, '' for the first page
-- ARGV[2] page size
--
-- Returns
--   {seat, status, seat, status, ...}  status is free, held or booked; a hold already
--                                      due counts as free
--   {-1}                               event not found

local K = event_keys()
if redis.call('EXISTS', K.meta) == 0 then
  return {-1}
end
local low = '-'
if ARGV[1] ~= '' then
  low = '(' .. ARGV[1]
end
local now = now_ms()
local out = {}
for _, seat in ipairs(redis.call('ZRANGEBYLEX', K.seats, low, '+', 'LIMIT', 0, tonumber(ARGV[2]))) do
  local status = 'free'
  local holder_id = redis.call('HGET', K.claims, seat)
  if holder_id then
    -- a claim belongs to an active reservation: RESERVED ones have a hold, CONFIRMED none
    local expires_at = redis.call('ZSCORE', K.holds, holder_id)
    if not expires_at then
      status = 'booked'
    elseif tonumber(expires_at) > now then
      status = 'held'
    end
  end
  out[#out + 1] = seat
  out[#out + 1] = status
end
return out
