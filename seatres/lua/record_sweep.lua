-- record_sweep.lua: the expiry job's record, for /metrics and /readyz.
--
-- KEYS[1] stats     hash, the sweep's record: lastSuccess (ms), lastSeconds, lastExpired,
--                   runs and expired (totals)
--
-- ARGV[1] holds expired by the run
-- ARGV[2] seconds the run took
--
-- Returns the time (ms) recorded as lastSuccess.
--
-- One script, so the time comes from the Redis that keeps the record (its clock is the
-- one /readyz compares with) and the totals move together with it.

local stats = KEYS[1]
local expired, seconds = ARGV[1], ARGV[2]
local now = now_ms()
redis.call('HSET', stats, 'lastSuccess', now, 'lastSeconds', seconds, 'lastExpired', expired)
redis.call('HINCRBY', stats, 'runs', 1)
redis.call('HINCRBY', stats, 'expired', expired)
return now
