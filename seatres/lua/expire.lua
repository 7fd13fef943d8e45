-- expire.lua: RESERVED -> EXPIRED for a bounded batch of an event's due holds.
--
-- KEYS[1] claims        hash, seat id -> id of its active reservation
-- KEYS[2] reservations  hash, reservation id -> reservation JSON
-- KEYS[3] holds         zset, RESERVED reservation id -> expiresAt (ms)
-- KEYS[4] meta          hash, event name and seat counters (held, booked)
--
-- ARGV[1] batch size: at most this many holds are examined, so one call stays short
--
-- Returns {expired, more, next_due, id, ...}
--   expired   number of reservations this call moved to EXPIRED
--   more      1 when due holds remain beyond this batch, else 0
--   next_due  expiresAt (ms) of the earliest remaining hold, -1 when none is left
--   id, ...   the ids this call expired (each id is expired by exactly one call:
--             the state is re-checked here, inside Redis)
--
-- Entries whose reservation is no longer RESERVED (confirmed or cancelled a moment
-- ago) are only dropped from the holds set; their state is left as it is.

local claims_key, reservations_key, holds_key, meta_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local batch = tonumber(ARGV[1])

local now = now_ms()
local due = redis.call('ZRANGEBYSCORE', holds_key, '-inf', now, 'LIMIT', 0, batch)
local expired = {}
for _, id in ipairs(due) do
  local r = load_reservation(reservations_key, id)
  if r and is_due(r, now) then
    end_hold(claims_key, holds_key, meta_key, reservations_key, r, 'EXPIRED', now)
    expired[#expired + 1] = id
  elseif r and r.state == 'RESERVED' then
    -- the score lags the reservation (it was extended): put it right
    redis.call('ZADD', holds_key, r.expiresAt, id)
  else
    redis.call('ZREM', holds_key, id)
  end
end

local more = 0
if #due == batch and #redis.call('ZRANGEBYSCORE', holds_key, '-inf', now, 'LIMIT', 0, 1) > 0 then
  more = 1
end
local next_due = -1
local first = redis.call('ZRANGE', holds_key, 0, 0, 'WITHSCORES')
if #first > 0 then
  next_due = tonumber(first[2])
end
return {#expired, more, next_due, unpack(expired)}
