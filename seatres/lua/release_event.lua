-- release_event.lua: a sweep gives back an event it claimed.
--
-- KEYS[1] due       zset, eventId -> earliest time (ms) the event may have a due hold
-- KEYS[2] claimed   zset, eventId -> time (ms) until which a sweep owns the event
--
-- ARGV[1] event id
-- ARGV[2] the caller's lease end, as claim_due_events returned it
-- ARGV[3] expiresAt (ms) of the event's earliest remaining hold, '' when none is left
--
-- Returns 1 when the caller's claim was removed, 0 when another sweep holds the event
-- now (it claimed it again meanwhile: its claim stays, so its death cannot lose the
-- event).

local due_key, claimed_key = KEYS[1], KEYS[2]
local event_id, lease_until, next_due = ARGV[1], tonumber(ARGV[2]), ARGV[3]

if next_due ~= '' then
  redis.call('ZADD', due_key, 'LT', next_due, event_id)
end
if tonumber(redis.call('ZSCORE', claimed_key, event_id) or '-1') == lease_until then
  redis.call('ZREM', claimed_key, event_id)
  return 1
end
return 0
