-- confirm.lua: RESERVED -> CONFIRMED. The seats stay claimed, now as booked (their claim
-- keys no longer expire).
--
-- KEYS[1..7] the event's keys in the order of common.lua's event_keys: meta, seats,
--            claims, reservations, holds, customers, log
-- KEYS[8]    the idempotency record of (caller, Idempotency-Key); only with ARGV[6]
--
-- ARGV[1] reservation id
-- ARGV[2] caller id (the customer, or the admin acting)
-- ARGV[3] '1' when the caller is an admin (may act on any reservation), else '0'
-- ARGV[4] log stream MAXLEN (approximate)
-- ARGV[5] request nonce: tells a redis-py retry of this call from a later replay
-- ARGV[6] request fingerprint for the idempotency key, '' without a key
-- ARGV[7] how long the idempotency record is kept, in ms
--
-- Returns
--   {1, json}       confirmed now
--   {2, json}       was already CONFIRMED: unchanged (a client or redis-py retry)
--   {3, code, ...}  replay: the answer first given for this idempotency key
--   {-1}            not found, or not the caller's reservation
--   {-4, json}      invalid transition (the reservation is CANCELLED)
--   {-5, json}      the hold had expired (a hold found due is marked EXPIRED first)
--   {-8}            the idempotency key was used for a different request
--   error TRYAGAIN  a Redis Cluster is moving the event's slot and a claim key to write
--                   is out of reach (common.lua TRY_AGAIN): nothing changed
--
-- The only write before a refusal is that lazy expiry, itself a transition, and the
-- idempotency record of the answer.

local K = event_keys()
local id, caller_id, is_admin, log_max = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local nonce, fingerprint, idempotency_ttl = ARGV[5], ARGV[6], ARGV[7]

local answer, reply = idempotency(K, fingerprint, nonce, idempotency_ttl)
if answer then
  return answer
end
local now = now_ms()
local refusal, r = check_transition(K, id, caller_id, is_admin, 'CONFIRMED', now, log_max)
if refusal then
  return reply(refusal)
end

redis.call('ZREM', K.holds, id)
redis.call('HINCRBY', K.meta, 'held', -#r.seatIds)
redis.call('HINCRBY', K.meta, 'booked', #r.seatIds)
r.state = 'CONFIRMED'
r.updatedAt = now
set_claim_keys(K, r)
record(K, r, 'confirm', 'RESERVED', caller_id, now, log_max)
return reply({1, save_reservation(K, r)})
