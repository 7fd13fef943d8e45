-- common.lua: helpers put before every script by seatres/store/scripts.py (or at the
-- script's `-- @common` line, after an early answer that needs none of them).
--
-- Every script of an event receives the event's keys in one fixed order (event_keys
-- below; seatres/store/keys.py builds them), so they all share the event's hash slot.
-- Reservations live as JSON values in the event's reservations hash. The one key name a
-- script builds itself is a seat's claim key (claim_key below), made from the meta key's
-- hash tag, so it shares the slot of the KEYS that route the call on a Redis Cluster.

local function event_keys()
  return {
    meta = KEYS[1],          -- hash: eventId, name, createdAt, updatedAt, held, booked
    seats = KEYS[2],         -- zset: seat id -> 0
    claims = KEYS[3],        -- hash: seat id -> id of its active reservation
    reservations = KEYS[4],  -- hash: reservation id -> reservation JSON
    holds = KEYS[5],         -- zset: RESERVED reservation id -> expiresAt (ms)
    customers = KEYS[6],     -- hash: customer id -> seats in active reservations
    log = KEYS[7],           -- stream: every state change
    idempotency = KEYS[8],   -- string: the remembered answer of one idempotency key
                             -- (only with a fingerprint: reserve.lua may pass another key)
    -- the meta key is "<tag>:meta"; a seat's claim key is "<tag>:claim:<seat>"
    claim_prefix = string.sub(KEYS[1], 1, -5) .. 'claim:',
  }
end

-- A live claim is also a key of its own, `<tag>:claim:<seat>` (string: the id of the
-- reservation; seatres/store/keys.py claim_key), which Redis deletes the moment a hold's
-- time runs out: its expiry is expiresAt - 1, as Redis keeps a key through its expiry
-- millisecond and a hold is due at expiresAt; a booked seat's key never expires. So a
-- conflict is one GET, with no deadline and no clock to read (reserve.lua's early
-- answer). The claims hash stays the record every guard reads: a missing claim key only
-- sends a call the long way, while a claim key is never left behind its claim (every
-- script that ends a claim deletes it).
local function claim_key(K, seat)
  return K.claim_prefix .. seat
end

-- On a Redis Cluster, a slot being moved to another node hands its keys over one by one,
-- and Redis refuses a script any key not in KEYS that the node does not hold (or may no
-- longer hold, while the slot is migrating). A script must not stop half-way for that:
-- each one that writes claim keys checks, before its first write, that it can reach all
-- of them (those of the seats it claims and of the holds it ends). If not, it changes
-- nothing and answers TRYAGAIN, as Redis does for the declared keys of a slot in motion
-- (redis-py raises TryAgainError: 503, retry later).
local TRY_AGAIN = {err = 'TRYAGAIN a claim key of the event is being moved to another node'}

-- Whether any of these seats' claim keys is out of this node's reach (one EXISTS of them
-- all: an error reply, a table, when the slot is moving and one is not here).
local function claim_keys_moved(K, seats)
  if #seats == 0 then
    return false
  end
  local names = {}
  for i, seat in ipairs(seats) do
    names[i] = claim_key(K, seat)
  end
  return type(redis.pcall('EXISTS', unpack(names))) == 'table'
end

-- The seats of these reservations, and `seats` if given (for claim_keys_moved).
local function seats_of(holds, seats)
  local all = {unpack(seats or {})}
  for _, r in pairs(holds) do
    for _, seat in ipairs(r.seatIds) do
      all[#all + 1] = seat
    end
  end
  return all
end

-- Writes the claim keys of reservation r's seats: held until its hold's end, or for
-- good once it is CONFIRMED (SET drops an earlier expiry).
local function set_claim_keys(K, r)
  for _, seat in ipairs(r.seatIds) do
    if r.state == 'CONFIRMED' then
      redis.call('SET', claim_key(K, seat), r.id)
    else
      redis.call('SET', claim_key(K, seat), r.id, 'PXAT', r.expiresAt - 1)
    end
  end
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function load_reservation(K, id)
  local raw = redis.call('HGET', K.reservations, id)
  if not raw then
    return nil
  end
  return cjson.decode(raw)
end

-- Returns the JSON written, which is also the script's answer: encoded once.
local function save_reservation(K, r)
  local json = cjson.encode(r)
  redis.call('HSET', K.reservations, r.id, json)
  return json
end

-- A hold whose time has passed counts as expired the moment anything touches it.
local function is_due(r, now)
  return r.state == 'RESERVED' and r.expiresAt <= now
end

-- Whether the active reservation that claims a seat still holds it at `now`. Returns
-- true, or false and that reservation when its hold is due (to be expired lazily).
-- Looks at the hold's score first (a CONFIRMED reservation has none), and decodes the
-- reservation only when the hold is due: on a burst most calls end in a conflict here.
local function claim_is_live(K, holder_id, now)
  local expires_at = redis.call('ZSCORE', K.holds, holder_id)
  if not expires_at or tonumber(expires_at) > now then
    return true
  end
  local holder = load_reservation(K, holder_id)
  if holder and is_due(holder, now) then
    return false, holder
  end
  return true
end

-- Sorts one seat's claim: a live one puts the seat in `taken`, a due one puts its
-- holder in `stale` (to be expired once every guard has passed). Returns the id of the
-- reservation that claims the seat, or false.
local function sort_claim(K, seat, now, taken, stale)
  local holder_id = redis.call('HGET', K.claims, seat)
  if not holder_id then
    return false
  end
  local live, due_holder = claim_is_live(K, holder_id, now)
  if live then
    taken[#taken + 1] = seat
  else
    stale[holder_id] = due_holder
  end
  return holder_id
end

local function may_access(r, caller_id, is_admin)
  return is_admin == '1' or r.customerId == caller_id
end

-- Appends a change to the reservation's own history and to the event's log stream.
local function record(K, r, action, from, by, now, log_max)
  r.history = r.history or {}
  local entry = {at = now, action = action, to = r.state, by = by}
  if from then
    entry.from = from
  end
  r.history[#r.history + 1] = entry
  redis.call('XADD', K.log, 'MAXLEN', '~', log_max, '*',
    'reservation', r.id, 'action', action, 'from', from or '', 'to', r.state,
    'by', by, 'customer', r.customerId, 'seats', table.concat(r.seatIds, ','), 'at', now)
end

local function add_customer_seats(K, customer_id, n)
  if redis.call('HINCRBY', K.customers, customer_id, n) <= 0 then
    redis.call('HDEL', K.customers, customer_id)
  end
end

-- Ends a RESERVED hold: frees the seats it still claims, drops it from the holds set
-- and moves it to the terminal state given. Seats claimed by another reservation are
-- never touched, so a stale hold can never free a newer one. Returns the reservation's
-- new JSON.
local function end_hold(K, r, state, action, by, now, log_max)
  for _, seat in ipairs(r.seatIds) do
    if redis.call('HGET', K.claims, seat) == r.id then
      redis.call('HDEL', K.claims, seat)
      redis.call('DEL', claim_key(K, seat))
    end
  end
  redis.call('ZREM', K.holds, r.id)
  redis.call('HINCRBY', K.meta, 'held', -#r.seatIds)
  add_customer_seats(K, r.customerId, -#r.seatIds)
  r.state = state
  r.updatedAt = now
  record(K, r, action, 'RESERVED', by, now, log_max)
  return save_reservation(K, r)
end

-- The guards every caller-driven change of one reservation shares (confirm, cancel,
-- extend). Returns nil and the reservation when the change may go ahead, or the reply:
--   {-1}        not found, or not the caller's reservation
--   {2, json}   already in `target` state (when one is given): unchanged (a client or
--               redis-py retry)
--   {-5, json}  the hold had expired; one found due here is marked EXPIRED first, so
--               a retry answers the same
--   {-4, json}  any other state: the transition is not allowed
--   TRY_AGAIN   a claim key of the reservation's seats is out of reach (see above)
local function check_transition(K, id, caller_id, is_admin, target, now, log_max)
  local r = load_reservation(K, id)
  if not r or not may_access(r, caller_id, is_admin) then
    return {-1}
  end
  if target and r.state == target then
    return {2, cjson.encode(r)}
  end
  if r.state == 'EXPIRED' then
    return {-5, cjson.encode(r)}
  end
  if r.state ~= 'RESERVED' then
    return {-4, cjson.encode(r)}
  end
  if claim_keys_moved(K, r.seatIds) then
    return TRY_AGAIN
  end
  if is_due(r, now) then
    end_hold(K, r, 'EXPIRED', 'expire', 'system', now, log_max)
    return {-5, cjson.encode(r)}
  end
  return nil, r
end

-- Idempotency keys. The answer of a request that carried a key is kept at K.idempotency
-- with the request's fingerprint, in the same script as the change it answers for.
-- Returns `answer, reply`: when `answer` is not nil the script returns it at once:
--   {-8}              the key was used for another request (fingerprint differs)
--   {3, code, ...}    the remembered answer of an earlier request (a replay)
--   {code, ...}       the remembered answer of this very request, sent again by a
--                     redis-py retry (same nonce): answered as the first time
-- Otherwise the script runs and passes every reply it gives through `reply`, which
-- remembers it (when a key came) and returns it. "Not found" ({-1}) is never
-- remembered: it reveals nothing worth replaying, and remembering it would let anyone
-- create records under made-up event ids, or under someone else's reservation. Nor is
-- an error reply (TRY_AGAIN): it says "not now", not what the request did.
local function idempotency(K, fingerprint, nonce, ttl_ms)
  local function reply(r)
    if fingerprint ~= '' and r[1] ~= -1 and not r.err then
      local kept = cjson.encode({fingerprint = fingerprint, nonce = nonce, reply = r})
      redis.call('SET', K.idempotency, kept, 'PX', ttl_ms)
    end
    return r
  end
  if fingerprint == '' then
    return nil, reply
  end
  local raw = redis.call('GET', K.idempotency)
  if not raw then
    return nil, reply
  end
  local kept = cjson.decode(raw)
  if kept.fingerprint ~= fingerprint then
    return {-8}, reply
  end
  if kept.nonce == nonce then
    return kept.reply, reply
  end
  local replay = {3}
  for _, v in ipairs(kept.reply) do
    replay[#replay + 1] = v
  end
  return replay, reply
end
