-- timgate's shared lanes: one script, loaded once, run by EVALSHA. Times are microseconds of
-- Redis's own clock (TIME), never a replica's; ARGV[2] may fix "now" for tests. Every timing
-- value is written into the text by the limiter (`fleet::script`, from its `timing` module)
-- as its first line, ahead of this one, so a call does not parse them again: they are
-- constant for a process, and a text with other values is another script (another SHA).
--
-- KEYS[1] members (sorted set: replica id -> time of its last live heartbeat), of the one app
--           whose lanes the call touches: the replicas that serve it
-- KEYS[2] claims  (hash: member name -> fallback claim, millionths of each of that app's limits;
--           "~" .. name -> until when (Redis time) that member's own sends on lanes of a
--           longer period than a second still count there; and "@" .. name -> "token seen":
--           the incarnation (one process) that holds the name, and the Redis time of its last
--           beat of any kind; and "#" -> the sum of the claims, so a beat reads two fields, not
--           the whole hash, however many members there are)
-- KEYS[3] epoch   (string: when this Redis state was born)
-- KEYS[4..] lanes (hash: p = pacing TAT, g = guard TAT, s = slowed until, l = the lowest limit
--           the guard was asked with lately, t = when it was last asked with it), narrowest first
--
-- ARGV[1] op: turn | guard | turns | guards | release | slow | beat | leave
-- ARGV[2] now ("" = TIME)
-- ARGV[3..] per op, below. A lane's *spec* is its limit, alone ("200": calls a second) or as
-- "limit/period/cost/largest" (units per period in µs, what this request costs, the most
-- one request may cost): a quota counted in recipients per minute, say.

-- The first line's timing values (µs unless said): `expiry`: a member whose last live beat
-- is older is counted in fallback. `quarantine`: no guard admits before the epoch's birth
-- plus this. PACE, GUARD: shares of a lane's capacity that pacing and the guard's refill run
-- at. SPREAD: how far apart from their admissions sends may reach Tencent. SLOWDOWN: how
-- long a lane runs at half pace after Tencent said too fast. KEEP: how long a lane's key
-- outlives its state (ms). LOWEST_STANDS: how long a lane's lowest limit stands after the
-- last call that asked with it: a larger limit takes over only then (a raise everywhere),
-- not while replicas still ask with both. TICK: a wait under it is not slept by a replica.
local MILLION = 1000000

local op = ARGV[1]
local now = tonumber(ARGV[2])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * MILLION + tonumber(t[2])
end
local born = tonumber(redis.call('GET', KEYS[3]))
if not born then
  born = now
  redis.call('SET', KEYS[3], born)
end
local open = born + quarantine

-- The ops that touch no lane (release, beat, leave) first: a call runs only the definitions
-- before its op, and each is made anew on every call.

-- release: ARGV[3..] before, after per lane. A reservation given back while still the last.
if op == 'release' then
  for i = 4, #KEYS do
    local before, after = ARGV[2 * i - 5], ARGV[2 * i - 4]
    if redis.call('HGET', KEYS[i], 'p') == after then
      redis.call('HSET', KEYS[i], 'p', before)
    end
  end
  return 0
end

-- Whether `token` may beat under a name that `held` holds ("token seen", or none): the name
-- is free, already this incarnation's, or held by one that has not beaten at all (live or
-- not) for the heartbeat expiry: a process under the name that is gone, or cut off from
-- Redis. Two processes that both reach Redis are told apart: the second is refused while
-- the first beats.
local function name_free(held, token)
  if not held then
    return true
  end
  local holder, seen = string.match(held, '^(%S+) (%d+)$')
  return holder == token or not seen or tonumber(seen) < now - expiry
end

-- The sum of the claims: `kept` ("#"), or worked out from the whole hash once if it is not
-- kept yet.
local function claims_total(kept)
  local total = tonumber(kept)
  if total then
    return total
  end
  total = 0
  local all = redis.call('HGETALL', KEYS[2])
  for i = 1, #all, 2 do
    local first = string.sub(all[i], 1, 1)
    if first ~= '~' and first ~= '@' and first ~= '#' then
      total = total + tonumber(all[i + 1])
    end
  end
  redis.call('HSET', KEYS[2], '#', total)
  return total
end

-- beat: ARGV[3] member name, ARGV[4] the claim it holds now, ARGV[5] the claim it wants,
-- ARGV[6] 1 = live, 0 = register as possibly in fallback, ARGV[7] ignore after ("" = never),
-- ARGV[8] how long a lapsed member is kept, ARGV[9] until when its fallback sends on lanes
-- of a longer period still count there ("" = none), set with a live beat, ARGV[10] this
-- process's incarnation token.
-- The claims never sum above a million: a larger claim is granted from what is free, and
-- never below what the replica holds now. A new incarnation under a member's name takes its
-- place, claim and all (replaced, not added); its predecessor's sends on longer lanes keep
-- counting until their time, at no smaller a claim. Returns {claim, live members, members,
-- now}; {-1, ...}: the beat came after its deadline; {-2, ...}: another incarnation that
-- still beats holds the name (nothing was written).
if op == 'beat' then
  local id, held, wanted, token = ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[10]
  local not_after = tonumber(ARGV[7])
  if not_after and now > not_after then
    return {-1, 0, 0, now}
  end
  -- The sum, and this name's holder, claim and longer lanes' time, in one read.
  local fields = redis.call('HMGET', KEYS[2], '#', '@' .. id, id, '~' .. id)
  local total = claims_total(fields[1])
  local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', string.format('(%.0f', now - tonumber(ARGV[8])))
  for _, name in ipairs(gone) do
    total = total - (tonumber(redis.call('HGET', KEYS[2], name)) or 0)
    redis.call('ZREM', KEYS[1], name)
    redis.call('HDEL', KEYS[2], name, '~' .. name, '@' .. name)
    if name == id then
      fields = {}
    end
  end
  if #gone > 0 then
    redis.call('HSET', KEYS[2], '#', total)
  end
  if not name_free(fields[2], token) then
    return {-2, 0, redis.call('ZCARD', KEYS[1]), now}
  end
  local own = tonumber(fields[3]) or 0
  local granted = math.max(held, math.min(wanted, MILLION - (total - own)))
  local counted = tonumber(fields[4])
  if counted and counted > now then
    granted = math.max(granted, own)
  end
  redis.call('HSET', KEYS[2], '@' .. id, token .. ' ' .. string.format('%.0f', now),
    id, granted, '#', total - own + granted)
  if ARGV[6] == '1' then
    redis.call('ZADD', KEYS[1], now, id)
    local long_until = tonumber(ARGV[9])
    if long_until and long_until > math.max(counted or 0, now) then
      redis.call('HSET', KEYS[2], '~' .. id, long_until)
    elseif counted and counted <= now then
      redis.call('HDEL', KEYS[2], '~' .. id)
    end
  else
    redis.call('ZADD', KEYS[1], now - expiry - 1, id)
  end
  local live = redis.call('ZCOUNT', KEYS[1], now - expiry, '+inf')
  return {granted, live, redis.call('ZCARD', KEYS[1]), now}
end

-- leave: ARGV[3] member name, ARGV[4] incarnation token. A replica that shuts down gives
-- its claim back, unless another incarnation holds the name by now.
if op == 'leave' then
  local held = redis.call('HGET', KEYS[2], '@' .. ARGV[3])
  if held and string.match(held, '^(%S+)') ~= ARGV[4] then
    return 0
  end
  local own = tonumber(redis.call('HGET', KEYS[2], ARGV[3])) or 0
  if own > 0 and redis.call('HEXISTS', KEYS[2], '#') == 1 then
    redis.call('HINCRBY', KEYS[2], '#', -own)
  end
  redis.call('ZREM', KEYS[1], ARGV[3])
  redis.call('HDEL', KEYS[2], ARGV[3], '~' .. ARGV[3], '@' .. ARGV[3])
  return 0
end

-- The claims of members whose heartbeat lapsed: they may be spending them in fallback. With
-- `long`, for a lane of a longer period, also of live members whose fallback sends on such
-- lanes still count in that period.
local function read_lapsed_claims(long)
  -- '%d' (times are whole µs): Lua's own number to string keeps only 14 digits
  -- (1.7957482460219e+15), and '%.0f' costs Redis twice as much.
  local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', string.format('(%d', now - expiry))
  if long then
    local seen = {}
    for _, id in ipairs(ids) do
      seen[id] = true
    end
    local all = redis.call('HGETALL', KEYS[2])
    for i = 1, #all, 2 do
      local id = string.sub(all[i], 2)
      if string.sub(all[i], 1, 1) == '~' and tonumber(all[i + 1]) > now and not seen[id] then
        ids[#ids + 1] = id
        seen[id] = true
      end
    end
  end
  local claims = {}
  if #ids > 0 then
    for i, claim in ipairs(redis.call('HMGET', KEYS[2], unpack(ids))) do
      claims[i] = tonumber(claim) or 0
    end
  end
  return claims
end

-- The same, read once per call: every ask of a batch sees one membership.
local claims_read = {}
local function lapsed_claims(long)
  local which = long and 'long' or 'short'
  if not claims_read[which] then
    claims_read[which] = read_lapsed_claims(long)
  end
  return claims_read[which]
end

-- A lane's limit less what lapsed members may send on their own.
local function capacity(limit, claims)
  local c = limit
  for _, claim in ipairs(claims) do
    c = c - math.floor(limit * claim / MILLION)
  end
  return c
end

-- A lane's spec: limit, period (µs), this request's cost, the most one request may cost.
local function spec(text)
  local limit, period, cost, largest = string.match(text, '^(%d+)/(%d+)/(%d+)/(%d+)$')
  if not limit then
    return tonumber(text), MILLION, 1, 1
  end
  return tonumber(limit), tonumber(period), tonumber(cost), tonumber(largest)
end

-- The lane's shape at capacity c units per period: the pacing interval per unit, and the
-- guard's interval per unit and burst. The guard admits at most c units in any window of
-- period + SPREAD: burst b plus its refill over that window. With unit costs b is what the
-- rate GUARD x c leaves; a request may cost up to `largest`, so b is at least that, and the
-- refill then gives way to it (pacing follows at PACE / GUARD of the refill), as a local lane.
local function shape(c, period, largest)
  local window = period + SPREAD
  local unit_rate = GUARD * c
  local unit_burst = c - math.floor(unit_rate * window / period)
  local burst = math.max(1, math.min(math.max(unit_burst, largest), c - 1))
  local rate, pace = unit_rate, PACE * c
  if burst > unit_burst then
    rate = (c - burst) * period / window
    pace = rate * PACE / GUARD
  end
  return math.ceil(period / pace), math.ceil(period / rate), burst
end

-- A spec with what it makes of the lane now: limit, period, cost, largest, capacity c, the
-- pacing interval per request, the guard's interval per unit and burst. Worked out once per
-- call: every ask of a batch sees one membership.
local rated_specs = {}
local function rated(text)
  local r = rated_specs[text]
  if not r then
    local limit, period, cost, largest = spec(text)
    local c = capacity(limit, lapsed_claims(period > MILLION))
    r = {limit = limit, period = period, cost = cost, c = c}
    if c >= 1 then
      r.pace, r.interval, r.burst = shape(c, period, largest)
    end
    rated_specs[text] = r
  end
  return r
end

-- A lane's state, read at once: its times p, g, s (0 when unset), and l, t; `was` keeps them
-- as read (in the order of `FIELDS`), so that only what changed is written back.
local function read(key)
  local v = redis.call('HMGET', key, 'p', 'g', 's', 'l', 't')
  local p, g, s, t = tonumber(v[1]) or 0, tonumber(v[2]) or 0, tonumber(v[3]) or 0, tonumber(v[5]) or 0
  local l = tonumber(v[4])
  return {key = key, p = p, g = g, s = s, l = l, t = t, was = {p, g, s, l, t}}
end
local FIELDS = {'p', 'g', 's', 'l', 't'}

-- Every lane this call read, by key and in order: a batch reads each lane once and writes
-- what changed in it once, after its last ask. `period`: the window of the lane's limit.
local loaded, order = {}, {}
local function load(key, period)
  local lane = loaded[key]
  if not lane then
    lane = read(key)
    lane.period = period
    loaded[key] = lane
    order[#order + 1] = lane
  end
  return lane
end

-- Writes every changed field, and keeps each changed key alive as long as any of its times
-- is ahead, plus one period (past that its state is a fresh lane's), plus KEEP. Every value
-- is a whole number (µs, a limit, ms), written with '%d': the digits Redis's own conversion
-- of a number writes, at half its cost.
local function save_all()
  for _, lane in ipairs(order) do
    local args, was = {}, lane.was
    for i = 1, 5 do
      local name = FIELDS[i]
      local value = lane[name]
      if value ~= was[i] then
        args[#args + 1] = name
        args[#args + 1] = string.format('%d', value)
      end
    end
    if #args > 0 then
      redis.call('HSET', lane.key, unpack(args))
      local last = math.max(lane.p, lane.g, lane.s, now)
      local keep = KEEP + math.ceil((last - now + lane.period) / 1000)
      redis.call('PEXPIRE', lane.key, string.format('%d', keep))
    end
  end
end

-- The lanes of one ask, worked out once a call: a single op's, or a batch entry's, which every
-- ask alike in it shares. `lanes_asked`: {key, spec} per lane, narrowest first. Per lane: its
-- state, its spec as rated now, and the pacing step a turn takes on it (a lane slowed down
-- steps twice as far; only `slow`, a call of its own, slows a lane). `starved`: the first
-- lane without capacity now (lapsed members hold all of it), or false. `held`: how long the
-- guard waits for Redis's quarantine on these lanes' periods, at least 0.
local function plan(lanes_asked)
  local count = #lanes_asked
  local pl = {n = count, lanes = {}, rated = {}, steps = {}, starved = false, held = 0}
  for i = 1, count do
    local asked = lanes_asked[i]
    local r = rated_specs[asked[2]] or rated(asked[2])
    local lane = load(asked[1], r.period)
    pl.lanes[i], pl.rated[i] = lane, r
    if r.c < 1 then
      pl.starved = pl.starved or i
    else
      local interval = r.pace
      if lane.s > now then
        interval = interval * 2
      end
      pl.steps[i] = interval * r.cost
    end
    local held = open + r.period - MILLION - now
    if held > pl.held then
      pl.held = held
    end
  end
  return pl
end

-- turn: ARGV[3] longest wait, ARGV[4..] each lane's spec (KEYS[4..]).
-- Reserves one pacing slot (GCRA, burst 1, at PACE x capacity) on every lane at once (a
-- request costing k units takes k slots' time), or, when the first (narrowest) lane is
-- further behind than every other lane by more than their intervals, on the first lane
-- only, so a slow API never leaves a hole in its app's lane.
-- Returns {lanes reserved, wait, before1, after1[, before2, after2]} or {-lane, retry after};
-- a retry after of -1: the lane has no capacity now (lapsed members hold all of it), ask
-- again after a heartbeat.
-- `pl`: the lanes' `plan`. Writes the answer into `out` after its first `o` cells and
-- returns how many it holds then. Runs once per ask of a batch, on what `plan` worked out:
-- it reads and writes each lane's pacing time and allocates nothing but the answer's cells
-- (the scratch table below is reused).
local turn_slots = {}
local function turn(pl, max_wait, out, o)
  local lanes, steps, count = pl.lanes, pl.steps, pl.n
  for i = 1, count do
    if pl.starved == i then
      out[o + 1], out[o + 2] = -i, -1
      return o + 2
    end
    local slot = lanes[i].p
    if now > slot then
      slot = now
    end
    if slot - now > max_wait then
      out[o + 1], out[o + 2] = -i, slot - now
      return o + 2
    end
    turn_slots[i] = slot
  end
  local n = count
  local others = 0
  for i = 2, n do
    local after = turn_slots[i] + steps[i]
    if after > others then
      others = after
    end
  end
  if n >= 2 and turn_slots[1] > others then
    n = 1
  end
  local slot = turn_slots[1]
  for i = 2, n do
    if turn_slots[i] > slot then
      slot = turn_slots[i]
    end
  end
  out[o + 1], out[o + 2] = n, slot - now
  o = o + 2
  for i = 1, n do
    local lane = lanes[i]
    out[o + 1] = lane.p
    lane.p = slot + steps[i]
    out[o + 2] = lane.p
    o = o + 2
  end
  return o
end

-- guard: ARGV[3..] each lane's spec (KEYS[4..]). The send-time guard, fleet-wide: GCRA per unit at
-- the rate and burst of `shape`: at most capacity units in any window of period + SPREAD,
-- so sends that reach Tencent up to SPREAD apart from when Redis admitted them still make
-- at most capacity in any period. A request costing k units needs k cells at once.
-- Admits on every lane or on none; returns 0, or how long to wait before asking again.
-- A lane whose limit is lowered (asked with less than its lowest limit lately) admits
-- nothing for a period + SPREAD from then: no window holds sends under both limits, as a
-- local lane does across a reload. A raise needs nothing: every interval already spent is
-- at least the new one. After Redis lost its state nothing is admitted for the quarantine,
-- and on a lane of a longer period for that period longer (`plan`'s `held`): its sends
-- before are unknown.
-- `pl`: the lanes' `plan`. Allocates nothing, as `turn`.
local guard_next = {}
local function guard(pl)
  if now < open then
    return open - now
  end
  if pl.starved then
    return MILLION
  end
  local lanes, rs, count = pl.lanes, pl.rated, pl.n
  local wait = pl.held
  for i = 1, count do
    local lane, r = lanes[i], rs[i]
    local limit, cost, interval, burst = r.limit, r.cost, r.interval, r.burst
    local lowest = lane.l
    if lowest and limit < lowest then
      local closed = now + r.period + SPREAD + (burst - 1) * interval
      if closed > lane.g then
        lane.g = closed
      end
    end
    if not lowest or limit < lowest or (limit > lowest and now - lane.t > LOWEST_STANDS) then
      lane.l, lane.t = limit, now
    elseif limit == lowest then
      lane.t = now
    end
    local tat = lane.g
    if now > tat then
      tat = now
    end
    local needs = tat + (cost - burst) * interval - now
    if needs > wait then
      wait = needs
    end
    guard_next[i] = tat + cost * interval
  end
  if wait > 0 then
    return wait
  end
  for i = 1, count do
    lanes[i].g = guard_next[i]
  end
  return 0
end

-- One turn or one guard: its lanes are KEYS[4..], their specs ARGV[first..].
local function asked_lanes(first)
  local lanes = {}
  for i = 4, #KEYS do
    lanes[#lanes + 1] = {KEYS[i], ARGV[first + i - 4]}
  end
  return lanes
end

if op == 'turn' then
  local reply = {}
  turn(plan(asked_lanes(4)), tonumber(ARGV[3]), reply, 0)
  save_all()
  return reply
end

if op == 'guard' then
  local wait = guard(plan(asked_lanes(3)))
  save_all()
  return wait
end

-- turns, guards: a batch, the asks of one replica's concurrent requests, run in order as
-- that many turn or guard calls would be at the same Redis time, each lane read and written
-- once. ARGV[3] how many entries; then per entry: how many asks alike it stands for (one
-- after the other), (turns only) their longest wait and whether to guard too (1 or 0),
-- their lane count k, and k times: the lane's index in KEYS, its spec. Returns each ask's
-- answer as the single op would, each preceded by its length, all packed in one string of
-- 8-byte little-endian integers: a client reads an array's every number through its reply
-- parser (in redis-rs, some 1.4k instructions a number), a string's bytes at once.
-- A turn asked to guard too (its request holds a ready connection) runs the guard on the
-- same lanes right after it when every lane was reserved with a wait under a timer tick
-- (which the replica does not sleep: it would send at once), and appends the guard's answer,
-- or -1 when the guard was not run: then the request sends after its own guard call. So a
-- request that need not wait makes one call, as a turn and a guard made back to back.
-- An entry's lanes are planned once for all its asks alike.
if op == 'turns' or op == 'guards' then
  local replies, o, at = {}, 0, 4
  for _ = 1, tonumber(ARGV[3]) do
    local alike = tonumber(ARGV[at])
    at = at + 1
    local max_wait, also_guard
    if op == 'turns' then
      max_wait, also_guard, at = tonumber(ARGV[at]), ARGV[at + 1] == '1', at + 2
    end
    local lanes = {}
    for j = 1, tonumber(ARGV[at]) do
      lanes[j] = {KEYS[tonumber(ARGV[at + 2 * j - 1])], ARGV[at + 2 * j]}
    end
    at = at + 1 + 2 * #lanes
    local pl = plan(lanes)
    for _ = 1, alike do
      if op == 'turns' then
        local start = o + 1
        replies[start] = 0
        o = turn(pl, max_wait, replies, start)
        if also_guard then
          if replies[start + 1] == pl.n and replies[start + 2] < TICK then
            replies[o + 1] = guard(pl)
          else
            replies[o + 1] = -1
          end
          o = o + 1
        end
        replies[start] = o - start
      else
        replies[o + 1], replies[o + 2] = 1, guard(pl)
        o = o + 2
      end
    end
  end
  save_all()
  return struct.pack('<' .. string.rep('l', o), unpack(replies, 1, o))
end

-- slow: ARGV[3] the lane's spec. Tencent said too fast: half pace for a while, from now.
if op == 'slow' then
  local limit, period, _, largest = spec(ARGV[3])
  local c = math.max(capacity(limit, lapsed_claims(period > MILLION)), 1)
  local interval = shape(c, period, largest)
  local lane = load(KEYS[4], period)
  lane.s, lane.p = now + SLOWDOWN, math.max(lane.p, now) + 2 * interval
  save_all()
  return 0
end

return redis.error_reply('unknown op ' .. tostring(op))
