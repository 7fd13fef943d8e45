-- expire.lua: RESERVED -> EXPIRED for a bounded batch of an event's due holds.
--
-- KEYS[1..7] the event's keys in the order of common.lua's event_keys: meta, seats,
--            claims, reservations, holds, customers, log
--
-- ARGV[1] batch size: at most this many holds are examined, so one call stays short
-- ARGV[2] log stream MAXLEN (approximate)
--
-- Returns {expired, more, next_due, id, ...}
--   expired   number of reservations this call moved to EXPIRED
--   more      1 when due holds remain beyond this batch, else 0
--   next_due  expiresAt (ms) of the earliest remaining hold, -1 when none is left
--   id, ...   the ids this call expired (each id is expired by exactly one call:
--             the state is re-checked here, inside Redis)
-- or the error TRYAGAIN when a Redis Cluster is moving the event's slot and a claim key
-- of a hold to end is out of reach (common.lua TRY_AGAIN): nothing changed
--
-- Entries whose reservation is no longer RESERVED (confirmed or cancelled a moment
-- ago) are only dropped from the holds set; their state is left as it is.

local K = event_keys()
local batch, log_max = tonumber(ARGV[1]), ARGV[2]

local now = now_ms()
local due = redis.call('ZRANGEBYSCORE', K.holds, '-inf', now, 'LIMIT', 0, batch)
-- every reservation read before the first write: the claim keys of the holds to end
-- must all be within reach (common.lua claim_keys_moved)
local found, ending = {}, {}
for i, id in ipairs(due) do
  local r = load_reservation(K, id)
  found[i] = r or false
  if r and is_due(r, now) then
    ending[#ending + 1] = r
  end
end
if claim_keys_moved(K, seats_of(ending)) then
  return TRY_AGAIN
end
local expired = {}
for i, id in ipairs(due) do
  local r = found[i]
  if r and is_due(r, now) then
    end_hold(K, r, 'EXPIRED', 'expire', 'system', now, log_max)
    expired[#expired + 1] = id
  elseif r and r.state == 'RESERVED' then
    -- the score lags the reservation (it was extended): put it right
    redis.call('ZADD', K.holds, r.expiresAt, id)
  else
    redis.call('ZREM', K.holds, id)
  end
end

local more = 0
if #due == batch and #redis.call('ZRANGEBYSCORE', K.holds, '-inf', now, 'LIMIT', 0, 1) > 0 then
  more = 1
end
local next_due = -1
local first = redis.call('ZRANGE', K.holds, 0, 0, 'WITHSCORES')
if #first > 0 then
  next_due = tonumber(first[2])
end
return {#expired, more, next_due, unpack(expired)}
