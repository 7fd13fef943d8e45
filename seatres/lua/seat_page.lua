-- seat_page.lua: read-only. One page of an event's seats with their status.
--
-- KEYS[1] meta          hash, the event (its existence is checked)
-- KEYS[2] seats         zset, every seat id of the event (score 0, so ordered by id)
-- KEYS[3] claims        hash, seat id -> id of its active reservation
-- KEYS[4] reservations  hash, reservation id -> reservation JSON
--
-- ARGV[1] cursor: the last seat id of the previous page, '' for the first page
-- ARGV[2] page size
--
-- Returns
--   {seat, status, seat, status, ...}  status is free, held or booked; a hold already
--                                      due counts as free
--   {-1}                               event not found

local meta_key, seats_key, claims_key, reservations_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
if redis.call('EXISTS', meta_key) == 0 then
  return {-1}
end
local low = '-'
if ARGV[1] ~= '' then
  low = '(' .. ARGV[1]
end
local now = now_ms()
local out = {}
for _, seat in ipairs(redis.call('ZRANGEBYLEX', seats_key, low, '+', 'LIMIT', 0, tonumber(ARGV[2]))) do
  local status = 'free'
  local holder_id = redis.call('HGET', claims_key, seat)
  if holder_id then
    local r = load_reservation(reservations_key, holder_id)
    if r and r.state == 'CONFIRMED' then
      status = 'booked'
    elseif r and r.state == 'RESERVED' and r.expiresAt > now then
      status = 'held'
    end
  end
  out[#out + 1] = seat
  out[#out + 1] = status
end
return out
