-- reserve.lua: RESERVE one or more seats of an event for a customer (all or none).
--
-- KEYS[1..7] the event's keys in the order of common.lua's event_keys: meta, seats,
--            claims, reservations, holds, customers, log
-- KEYS[8]    the idempotency record of (customer, Idempotency-Key); only with ARGV[6]
-- KEYS[8|9]  the sweep's index of due events (keys.py SWEEP_DUE), last, on a single Redis
--            only: a new hold indexes its event here, in the same step. On a Redis Cluster
--            the index lives in another slot, and the caller indexes the event after the
--            script (RedisStore._index_hold).
--
-- ARGV[1] reservation id, chosen by the caller. A retried call with the same id
--         (redis-py retries after timeouts) finds its own reservation and answers
--         with it instead of creating a second one: by the seats' claims, which carry
--         this id while the hold stands, and, once every guard has passed, by the id
--         itself. (A retry whose hold has meanwhile ended and whose seat someone else
--         took answers as any late request would: the seat is taken.)
-- ARGV[2] customer id
-- ARGV[3] hold length in ms
-- ARGV[4] most seats the customer may have active in this event (0 = no limit)
-- ARGV[5] log stream MAXLEN (approximate)
-- ARGV[6] request fingerprint for the idempotency key, '' without a key
-- ARGV[7] how long the idempotency record is kept, in ms
-- ARGV[8..] seat ids, no duplicates
--
-- Returns
--   {1, json}          created
--   {2, json}          this id was already created by an earlier call (a retry)
--   {3, code, ...}     replay: the answer first given for this idempotency key
--   {-1}               event not found
--   {-2, seat, ...}    seats that are not part of the event
--   {-3, seat, ...}    seats held or booked by another active reservation
--   -3                 (the early answer below) every seat asked is held or booked by
--                      another active reservation
--   {-6}               the id exists but belongs to another customer
--   {-7, limit, 'seats'}  the customer would have more than `limit` active seats
--   {-8}               the idempotency key was used for a different request
--   error TRYAGAIN     a Redis Cluster is moving the event's slot and a claim key to
--                      write is out of reach (common.lua TRY_AGAIN): nothing changed
--
-- Holds whose time has passed are expired here (lazy expiry) before their seats are
-- claimed, but only once every guard has passed: a refused call changes no seat and no
-- reservation (it only remembers its answer under the idempotency key, if one came).
--
-- Most calls of a burst find their seat held by someone else. Without an idempotency
-- key, that answer is worked out first, before common.lua's helpers are defined (their
-- closures and tables cost more than the lookup): one GET of each seat's claim key (see
-- claim_key in common.lua), which exists only while its claim is live, so neither the
-- hold's deadline nor the clock need be read. The answer is the bare code: the caller
-- knows which seats it asked for, and a table listing them cost 0.5 us a call. Any other
-- case (a seat without a live claim key, this id's own claim) goes on to the full script
-- below, which reads the claims hash and answers in its own order of guards.

if ARGV[6] == '' then
  -- claim_key() is not defined yet: the same name, from the meta key "<tag>:meta"
  local prefix = string.sub(KEYS[1], 1, -5) .. 'claim:'
  local all_taken = true
  for i = 8, #ARGV do
    -- pcall: on a Redis Cluster moving the event's slot, a key this node no longer holds
    -- is an error reply, a table; the full script answers without claim keys then
    local holder_id = redis.pcall('GET', prefix .. ARGV[i])
    if type(holder_id) ~= 'string' or holder_id == ARGV[1] then
      all_taken = false
      break
    end
  end
  if all_taken then
    return -3
  end
end

-- @common

local K = event_keys()
local id, customer_id = ARGV[1], ARGV[2]
local hold_ms, max_per_customer, log_max = tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local fingerprint, idempotency_ttl = ARGV[6], ARGV[7]
local FIRST_SEAT = 8
local sweep_due = KEYS[fingerprint == '' and 8 or 9]  -- nil on a Redis Cluster

local answer, reply = idempotency(K, fingerprint, id, idempotency_ttl)
if answer then
  return answer
end

-- The answer when this id already exists: an earlier run of this very call made it.
local function made_before()
  local existing = load_reservation(K, id)
  if not existing then
    return nil
  end
  if existing.customerId ~= customer_id then
    return {-6}
  end
  return reply({2, cjson.encode(existing)})
end

local now = now_ms()
local seat_ids = {}
local unknown = {}
local taken = {}
local stale = {}
local retried = false
for i = FIRST_SEAT, #ARGV do
  local seat = ARGV[i]
  seat_ids[#seat_ids + 1] = seat
  -- The claim first: on a burst most calls end here, in a conflict, with no other read.
  -- A claimed seat is always one of the event's (upsert_event never removes a claimed
  -- seat), so only an unclaimed one needs the seats lookup.
  local holder_id = sort_claim(K, seat, now, taken, stale)
  if holder_id == id then
    retried = true
  elseif not holder_id and not redis.call('ZSCORE', K.seats, seat) then
    unknown[#unknown + 1] = seat
  end
end
if retried then
  return made_before()
end
if #unknown > 0 then
  -- an event that does not exist has no seats at all
  if redis.call('EXISTS', K.meta) == 0 then
    return reply({-1})
  end
  return reply({-2, unpack(unknown)})
end
if #taken > 0 then
  return reply({-3, unpack(taken)})
end
local earlier = made_before()
if earlier then
  return earlier
end

if max_per_customer > 0 then
  local active = tonumber(redis.call('HGET', K.customers, customer_id) or '0')
  if active + #seat_ids > max_per_customer then
    -- the customer's own due holds no longer count (and are expired below)
    for _, due_id in ipairs(redis.call('ZRANGEBYSCORE', K.holds, '-inf', now)) do
      local r = load_reservation(K, due_id)
      if r and r.customerId == customer_id and is_due(r, now) then
        stale[due_id] = r
      end
    end
    for _, r in pairs(stale) do
      if r.customerId == customer_id then
        active = active - #r.seatIds
      end
    end
    if active + #seat_ids > max_per_customer then
      return reply({-7, max_per_customer, 'seats'})
    end
  end
end

if claim_keys_moved(K, seats_of(stale, seat_ids)) then
  return TRY_AGAIN
end
for _, holder in pairs(stale) do
  end_hold(K, holder, 'EXPIRED', 'expire', 'system', now, log_max)
end

local r = {
  id = id,
  eventId = redis.call('HGET', K.meta, 'eventId'),
  seatIds = seat_ids,
  customerId = customer_id,
  state = 'RESERVED',
  createdAt = now,
  expiresAt = now + hold_ms,
  updatedAt = now,
  history = {},
}
for _, seat in ipairs(seat_ids) do
  redis.call('HSET', K.claims, seat, id)
end
set_claim_keys(K, r)
redis.call('ZADD', K.holds, r.expiresAt, id)
if sweep_due then
  -- as RedisStore._index_hold: the event's earliest hold still to be swept, kept lowest
  redis.call('ZADD', sweep_due, 'LT', r.expiresAt, r.eventId)
end
redis.call('HINCRBY', K.meta, 'held', #seat_ids)
add_customer_seats(K, customer_id, #seat_ids)
record(K, r, 'reserve', nil, customer_id, now, log_max)
return reply({1, save_reservation(K, r)})
