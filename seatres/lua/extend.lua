-- extend.lua: push back the expiry of a RESERVED hold that has not expired yet.
--
-- KEYS[1..7] the event's keys in the order of common.lua's event_keys: meta, seats,
--            claims, reservations, holds, customers, log
-- KEYS[8]    the idempotency record of (caller, Idempotency-Key); only with ARGV[6]
--
-- ARGV[1] reservation id
-- ARGV[2] caller id (the customer, or the admin acting)
-- ARGV[3] '1' when the caller is an admin (may act on any reservation), else '0'
-- ARGV[4] log stream MAXLEN (approximate)
-- ARGV[5] request nonce: a redis-py retry of the same call (same nonce) extends once
-- ARGV[6] request fingerprint for the idempotency key, '' without a key
-- ARGV[7] how long the idempotency record is kept, in ms
-- ARGV[8] milliseconds to add to expiresAt
-- ARGV[9] longest total hold in ms (expiresAt - createdAt may not exceed it)
--
-- Returns
--   {1, json}       extended now
--   {3, code, ...}  replay: the answer first given for this idempotency key
--   {-1}            not found, or not the caller's reservation
--   {-4, json}      the reservation is CONFIRMED or CANCELLED
--   {-5, json}      the hold had expired (a hold found due is marked EXPIRED first)
--   {-7, limit, 'seconds'}  the hold would last longer than `limit` seconds in all
--   {-8}            the idempotency key was used for a different request
--   error TRYAGAIN  a Redis Cluster is moving the event's slot and a claim key to write
--                   is out of reach (common.lua TRY_AGAIN): nothing changed

local K = event_keys()
local id, caller_id, is_admin, log_max = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local nonce, fingerprint, idempotency_ttl = ARGV[5], ARGV[6], ARGV[7]
local extra_ms, max_hold_ms = tonumber(ARGV[8]), tonumber(ARGV[9])

local answer, reply = idempotency(K, fingerprint, nonce, idempotency_ttl)
if answer then
  return answer
end
local now = now_ms()
-- no state means "already extended": a retry is recognised by its nonce instead
local refusal, r = check_transition(K, id, caller_id, is_admin, nil, now, log_max)
if refusal then
  return reply(refusal)
end
if r.lastExtension == nonce then
  return reply({1, cjson.encode(r)})
end
local expires_at = r.expiresAt + extra_ms
if expires_at - r.createdAt > max_hold_ms then
  return reply({-7, math.floor(max_hold_ms / 1000), 'seconds'})
end

r.expiresAt = expires_at
r.updatedAt = now
r.lastExtension = nonce
redis.call('ZADD', K.holds, expires_at, id)
set_claim_keys(K, r)
record(K, r, 'extend', 'RESERVED', caller_id, now, log_max)
return reply({1, save_reservation(K, r)})
