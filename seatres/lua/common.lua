-- common.lua: helpers prepended to every transition script by seatres/store/scripts.py.
-- Reservations live as JSON values in the event's reservations hash, so every key a
-- script touches is one of the event's fixed keys (one hash slot, all passed in KEYS).

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function load_reservation(reservations_key, id)
  local raw = redis.call('HGET', reservations_key, id)
  if not raw then
    return nil
  end
  return cjson.decode(raw)
end

local function save_reservation(reservations_key, r)
  redis.call('HSET', reservations_key, r.id, cjson.encode(r))
end

-- A hold whose time has passed counts as expired the moment anything touches it.
local function is_due(r, now)
  return r.state == 'RESERVED' and r.expiresAt <= now
end

local function may_access(r, customer_id, is_admin)
  return is_admin == '1' or r.customerId == customer_id
end

-- Ends a RESERVED hold: frees the seats it still claims, drops it from the holds set
-- and moves it to the terminal state given. Seats claimed by another reservation are
-- never touched, so a stale hold can never free a newer one.
local function end_hold(claims_key, holds_key, meta_key, reservations_key, r, state, now)
  for _, seat in ipairs(r.seatIds) do
    if redis.call('HGET', claims_key, seat) == r.id then
      redis.call('HDEL', claims_key, seat)
    end
  end
  redis.call('ZREM', holds_key, r.id)
  redis.call('HINCRBY', meta_key, 'held', -#r.seatIds)
  r.state = state
  r.updatedAt = now
  save_reservation(reservations_key, r)
end
