-- claim_due_events.lua: hand a sweep the events that may have due holds.
--
-- KEYS[1] due       zset, eventId -> earliest time (ms) the event may have a due hold
-- KEYS[2] claimed   zset, eventId -> time (ms) until which a sweep owns the event
--
-- ARGV[1] lease in ms: how long the caller owns the events it gets
-- ARGV[2] at most this many events
--
-- Returns {lease_until, eventId, ...}: the end of the caller's lease (ms), then the
-- events whose due time has come, moved from `due` to `claimed`, plus events whose
-- earlier claim ran out (their sweep died).
--
-- The caller gives each event back with release_event.lua. Reservations that arrive
-- meanwhile ZADD the event to `due` again, so a claim never hides a newer hold.

local due_key, claimed_key = KEYS[1], KEYS[2]
local lease, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
local now = now_ms()
local lease_until = now + lease

local events = redis.call('ZRANGEBYSCORE', due_key, '-inf', now, 'LIMIT', 0, limit)
local orphans = redis.call('ZRANGEBYSCORE', claimed_key, '-inf', now, 'LIMIT', 0, limit)
for _, event_id in ipairs(events) do
  redis.call('ZREM', due_key, event_id)
  redis.call('ZADD', claimed_key, lease_until, event_id)
end
for _, event_id in ipairs(orphans) do
  redis.call('ZADD', claimed_key, lease_until, event_id)
  events[#events + 1] = event_id
end
return {lease_until, unpack(events)}
