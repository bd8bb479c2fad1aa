"""The Lua scripts behind RedisStorage: every transition of a batch, atomic on the server.

Every script works on the keys of ONE batch, all of which carry the batch's hash tag, so
the layout runs on Redis Cluster unchanged. The keys come in a fixed order (``KEYS``):

====  ===========  ==========================================================
 #    name         what it holds
====  ===========  ==========================================================
 1    meta         hash: the batch's fields and its counters ``q r s f c``
 2    keys         hash: item key → position
 3    items        hash: position → the item's state (and result), packed with cmsgpack
 4    payloads     hash: position → payload (JSON text)
 5    ready        zset: queued items claimable now, scored by position
 6    delayed      zset: queued items waiting for their retry time, scored by it
 7    delaypos     zset: the same items, scored by position (for listing)
 8    running      zset: running items, scored by their lease's deadline
 9    succeeded    zset: succeeded items, scored by position
 10   failed       zset: failed items, scored by position
 11   cancelled    zset: cancelled items, scored by position
====  ===========  ==========================================================

``ARGV[1]`` is the batch's notification channel and ``ARGV[2]`` the time to live of a
finished batch in seconds (0: kept until deleted). Times are the server's clock (TIME),
so runners on machines whose clocks disagree still agree on leases. Numbers leave the
server as text with 17 significant digits, which a float reads back exactly.
"""

from __future__ import annotations

__all__ = [
    "CANCEL",
    "CHUNK",
    "CLAIM",
    "COMMIT",
    "EXTEND",
    "FINISH",
    "FINISH_GROUP",
    "HOOK_ACK",
    "HOOK_CLAIM",
    "ITEM",
    "ITEMS",
    "RECORD",
    "RELEASE_KEY",
    "SCRIPTS",
]

_COMMON = r"""
local META, KEYMAP, ITEMS, PAYLOADS = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local READY, DELAYED, DELAYPOS, RUNNING = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local DONE = {succeeded = KEYS[9], failed = KEYS[10], cancelled = KEYS[11]}
local CHANNEL = ARGV[1]
local TTL = tonumber(ARGV[2])
local COUNTER = {queued = 'q', running = 'r', succeeded = 's', failed = 'f', cancelled = 'c'}
-- Fields of an item's packed record.
local STATE, ATTEMPT, TOKEN, DEADLINE, PROGRESS, MESSAGE = 1, 2, 3, 4, 5, 6
local ERROR, CREATED, UPDATED, STARTED, FINISHED, KEY, RESULT = 7, 8, 9, 10, 11, 12, 13
-- The core's record of earlier attempts (batchkit.history), stored unread.
local HISTORY = 14

local finished_now = false
local changed = false
-- The batch's hash, read once by a script and written back once (flush).
local meta = nil
local dirty = {}

local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

local function fmt(x)
  return string.format('%.17g', x)
end

local function opt(x)
  if x then return fmt(x) end
  return false
end

-- A time (seconds) as whole microseconds, an integer in a reply: a time holds no finer
-- part (see clock), and an integer costs less to write and to read than its text.
local function micros(x)
  if x then return math.floor(x * 1000000 + 0.5) end
  return false
end

local function load(pos)
  local raw = redis.call('HGET', ITEMS, pos)
  if not raw then return nil end
  return cmsgpack.unpack(raw)
end

local function save(pos, rec)
  redis.call('HSET', ITEMS, pos, cmsgpack.pack(rec))
end

local function publish()
  if not changed then
    changed = true
    redis.call('PUBLISH', CHANNEL, '1')
  end
end

-- New work (an item handed back) for idle workers, on the storage's channel
-- '<prefix>:work' (the batch's channel is '<prefix>:{<id>}:changes'). A new batch is
-- announced by the storage once it is in the index of active batches, where claims look.
local function announce_work()
  local prefix = string.match(CHANNEL, '^(.*):{[^{}]*}:changes$')
  if prefix then redis.call('PUBLISH', prefix .. ':work', '1') end
end

local META_FIELDS = {'id', 'finished', 'cancel_at', 'started', 'q', 'r', 's', 'f', 'c'}

-- The batch's fields this script needs; false when the batch does not exist.
local function get_meta()
  if meta == nil then
    local m = redis.call('HMGET', META, unpack(META_FIELDS))
    if not m[1] then
      meta = false
    else
      meta = {}
      for i, name in ipairs(META_FIELDS) do meta[name] = m[i] end
      for _, name in ipairs({'q', 'r', 's', 'f', 'c'}) do meta[name] = tonumber(meta[name]) end
    end
  end
  return meta
end

local function set_meta(name, value)
  meta[name] = value
  dirty[name] = true
end

-- Write the batch's changed fields back, in one command; expire a finished batch.
local function flush()
  local args = {}
  for name in pairs(dirty) do
    local value = meta[name]
    if type(value) == 'number' and name ~= 'q' and name ~= 'r' and name ~= 's'
        and name ~= 'f' and name ~= 'c' then
      value = fmt(value)
    end
    args[#args + 1] = name
    args[#args + 1] = value
  end
  if #args > 0 then redis.call('HSET', META, unpack(args)) end
  dirty = {}
  if finished_now and TTL > 0 then
    for i = 1, #KEYS do redis.call('EXPIRE', KEYS[i], TTL) end
  end
end

-- Move n items from one counter to another, in the same script as the items. The
-- batch is finished (once) when no queued or running item is left.
local function bump(old, new, n, t)
  if n == 0 then return end
  get_meta()
  set_meta(COUNTER[old], meta[COUNTER[old]] - n)
  set_meta(COUNTER[new], meta[COUNTER[new]] + n)
  set_meta('updated', t)
  if new ~= 'queued' and new ~= 'running' and meta.q + meta.r == 0 and not meta.finished then
    set_meta('finished', t)
    finished_now = true
  end
end

-- A queued or running item reaches a terminal state (the caller moves the counters).
local function end_item(pos, rec, state, t)
  if rec[STATE] == 'running' then redis.call('ZREM', RUNNING, pos) end
  rec[STATE] = state
  rec[TOKEN] = false
  rec[DEADLINE] = 0
  rec[FINISHED] = t
  rec[UPDATED] = t
  save(pos, rec)
  redis.call('ZADD', DONE[state], pos, pos)
end

-- The batch's fields as a flat list, plus the summed progress of its running items.
local function record()
  local h = redis.call('HGETALL', META)
  if #h == 0 then return false end
  local sum = 0
  for _, pos in ipairs(redis.call('ZRANGE', RUNNING, 0, -1)) do
    local rec = load(pos)
    if rec then sum = sum + rec[PROGRESS] end
  end
  h[#h + 1] = 'running_progress'
  h[#h + 1] = fmt(sum)
  return h
end

-- Claim the lowest-position claimable item: {1, key, position, payload, attempt,
-- history}, or
-- {0} when none is claimable now, {2} when the batch does not exist, {3} when finished.
local function claim_here(lease, token, t)
  local m = get_meta()
  if not m then return {2} end
  if m.finished then return {3} end
  local expired = redis.call('ZRANGEBYSCORE', RUNNING, '-inf', fmt(t))
  if m.cancel_at then
    -- A crashed runner's items in a cancelled batch end cancelled.
    for _, pos in ipairs(expired) do end_item(pos, load(pos), 'cancelled', t) end
    if #expired > 0 then
      bump('running', 'cancelled', #expired, t)
      publish()
    end
    return {0}
  end
  for _, pos in ipairs(redis.call('ZRANGEBYSCORE', DELAYED, '-inf', fmt(t))) do
    redis.call('ZREM', DELAYED, pos)
    redis.call('ZREM', DELAYPOS, pos)
    redis.call('ZADD', READY, pos, pos)
  end
  local popped = redis.call('ZPOPMIN', READY)
  local ready = nil
  if popped[1] then ready = tonumber(popped[1]) end
  local pick = ready
  for _, pos in ipairs(expired) do
    local p = tonumber(pos)
    if pick == nil or p < pick then pick = p end
  end
  if pick == nil then return {0} end
  if ready ~= nil and pick ~= ready then
    redis.call('ZADD', READY, ready, ready)  -- an expired lease comes first
  end
  local rec = load(pick)
  local old = rec[STATE]
  rec[STATE] = 'running'
  rec[ATTEMPT] = rec[ATTEMPT] + 1
  rec[TOKEN] = token
  rec[DEADLINE] = t + lease
  rec[PROGRESS] = 0
  rec[MESSAGE] = false
  rec[STARTED] = t
  rec[UPDATED] = t
  save(pick, rec)
  redis.call('ZADD', RUNNING, fmt(t + lease), pick)
  if old == 'queued' then
    bump('queued', 'running', 1, t)
    if not m.started then set_meta('started', t) end
  else
    set_meta('updated', t)
  end
  publish()
  return {
    1, rec[KEY], pick, redis.call('HGET', PAYLOADS, pick), rec[ATTEMPT], rec[HISTORY] or false,
  }
end

-- The claim that an earlier try of this call made, its reply lost with the connection:
-- the running item holding the call's token, in the shape of claim_here's reply, or nil.
-- Only a retry looks, so the scan of the running items costs nothing on the hot path.
local function claimed_by(token)
  for _, pos in ipairs(redis.call('ZRANGE', RUNNING, 0, -1)) do
    local rec = load(pos)
    if rec and rec[TOKEN] == token then
      return {
        1, rec[KEY], tonumber(pos), redis.call('HGET', PAYLOADS, pos), rec[ATTEMPT],
        rec[HISTORY] or false,
      }
    end
  end
  return nil
end

-- An item's 15 fields for ITEM and ITEMS (see `to_item`), given its packed record and its
-- payload, added to the end of ``out``: a page is one flat array, not a table per item.
-- Its times are whole microseconds; its progress 0, 1 or the text of a fraction.
-- The last is its lease's deadline while running (its score in the running set, on the
-- same clock as its times), false otherwise. No field is nil: a nil would end the array.
local function item_fields(out, pos, rec, payload)
  local result = false
  if rec[STATE] == 'succeeded' then result = rec[RESULT] end
  local lease_end = false
  if rec[STATE] == 'running' then lease_end = redis.call('ZSCORE', RUNNING, pos) end
  local n = #out
  out[n + 1] = rec[KEY]
  out[n + 2] = tonumber(pos)
  out[n + 3] = payload or false
  out[n + 4] = rec[STATE]
  local progress = rec[PROGRESS]
  if progress ~= 0 and progress ~= 1 then progress = fmt(progress) end
  out[n + 5] = progress
  out[n + 6] = rec[MESSAGE] or false
  out[n + 7] = rec[ATTEMPT]
  out[n + 8] = rec[ERROR] or false
  out[n + 9] = result or false
  out[n + 10] = micros(rec[CREATED])
  out[n + 11] = micros(rec[UPDATED])
  out[n + 12] = micros(rec[STARTED])
  out[n + 13] = micros(rec[FINISHED])
  out[n + 14] = rec[HISTORY] or false
  out[n + 15] = lease_end or false
end

-- The item under a lease, if the lease is current: position and record, or nil.
local function leased(key, token)
  local pos = redis.call('HGET', KEYMAP, key)
  if not pos then return nil end
  local rec = load(pos)
  if not rec or rec[STATE] ~= 'running' or rec[TOKEN] ~= token then return nil end
  return pos, rec
end
"""

#: Write one chunk of a new batch's items. ARGV: 3 first position, 4.. key, payload pairs.
#: The keys live with a provisional time to live until COMMIT makes the batch visible, so
#: a submitter that dies half-way leaves nothing behind for long. Returns 0 (and writes
#: nothing) when the batch already exists.
CHUNK = (
    _COMMON
    + r"""
if redis.call('EXISTS', META) == 1 then return 0 end
local t = clock()
local start = tonumber(ARGV[3])
local keymap, payloads, items, ready = {}, {}, {}, {}
local n = (#ARGV - 3) / 2
for i = 0, n - 1 do
  local pos = start + i
  local key = ARGV[4 + 2 * i]
  keymap[#keymap + 1] = key
  keymap[#keymap + 1] = pos
  payloads[#payloads + 1] = pos
  payloads[#payloads + 1] = ARGV[5 + 2 * i]
  items[#items + 1] = pos
  items[#items + 1] = cmsgpack.pack({
    'queued', 0, false, 0, 0, false, false, t, t, false, false, key,
  })
  ready[#ready + 1] = pos
  ready[#ready + 1] = pos
end
if n > 0 then
  redis.call('HSET', KEYMAP, unpack(keymap))
  redis.call('HSET', PAYLOADS, unpack(payloads))
  redis.call('HSET', ITEMS, unpack(items))
  redis.call('ZADD', READY, unpack(ready))
  for i = 2, 5 do redis.call('EXPIRE', KEYS[i], 86400) end
end
return n
"""
)

#: Make a batch visible, with its counters. ARGV: 3 id, 4 total, 5 metadata JSON,
#: 6 parent id, 7 idempotency key, 8 max failures ('' for none). Returns {created (1/0), record,
#: finished now (1/0)}: 0 when the batch already existed.
COMMIT = (
    _COMMON
    + r"""
if redis.call('EXISTS', META) == 1 then return {0, record(), 0} end
local total = tonumber(ARGV[4])
if redis.call('HLEN', KEYMAP) ~= total then
  return redis.error_reply('batchkit: the batch has ' .. redis.call('HLEN', KEYMAP) ..
    ' items written, not ' .. total)
end
local t = clock()
redis.call('HSET', META, 'id', ARGV[3], 'total', total, 'q', total, 'r', 0, 's', 0,
  'f', 0, 'c', 0, 'created', fmt(t), 'updated', fmt(t), 'metadata', ARGV[5])
if ARGV[6] ~= '' then redis.call('HSET', META, 'parent', ARGV[6]) end
if ARGV[7] ~= '' then redis.call('HSET', META, 'idem', ARGV[7]) end
if ARGV[8] ~= '' then redis.call('HSET', META, 'maxf', ARGV[8]) end
for i = 2, 5 do redis.call('PERSIST', KEYS[i]) end
if total == 0 then
  redis.call('HSET', META, 'finished', fmt(t))
  finished_now = true
  get_meta()
  flush()
end
return {1, record(), finished_now and 1 or 0}
"""
)

#: Read a batch: its record, or nil.
RECORD = (
    _COMMON
    + r"""
return record()
"""
)

#: Read one item. ARGV: 3 key. Returns {found: 0 no batch, 1 no item, 2 item; then the
#: item's fields} (see item_fields).
ITEM = (
    _COMMON
    + r"""
if redis.call('EXISTS', META) == 0 then return {0} end
local pos = redis.call('HGET', KEYMAP, ARGV[3])
if not pos then return {1} end
local out = {2}
item_fields(out, pos, load(pos), redis.call('HGET', PAYLOADS, pos))
return out
"""
)

#: List items in position order. ARGV: 3 after (-1 for the start), 4 limit, 5.. states
#: (none: every state). Returns {found (0/1), then each item's fields, one after the other}.
ITEMS = (
    _COMMON
    + r"""
local total = redis.call('HGET', META, 'total')
if not total then return {0} end
total = tonumber(total)
local after, limit = tonumber(ARGV[3]), tonumber(ARGV[4])
local positions = {}
if #ARGV < 5 then
  for p = after + 1, math.min(total - 1, after + limit) do positions[#positions + 1] = p end
else
  local found = {}
  local from = '(' .. ARGV[3]
  for i = 5, #ARGV do
    local state = ARGV[i]
    if state == 'running' then
      for _, pos in ipairs(redis.call('ZRANGE', RUNNING, 0, -1)) do
        if tonumber(pos) > after then found[#found + 1] = tonumber(pos) end
      end
    else
      local sets = {DONE[state]}
      if state == 'queued' then sets = {READY, DELAYPOS} end
      for _, set in ipairs(sets) do
        for _, pos in ipairs(redis.call('ZRANGEBYSCORE', set, from, '+inf', 'LIMIT', 0, limit)) do
          found[#found + 1] = tonumber(pos)
        end
      end
    end
  end
  table.sort(found)
  for i = 1, math.min(limit, #found) do positions[i] = found[i] end
end
-- The records and payloads of up to 500 positions in one call each (a call from a script
-- costs more than the unpacking of what it reads).
local out = {1}
for first = 1, #positions, 500 do
  local some = {unpack(positions, first, math.min(#positions, first + 499))}
  local recs = redis.call('HMGET', ITEMS, unpack(some))
  local payloads = redis.call('HMGET', PAYLOADS, unpack(some))
  for i, p in ipairs(some) do
    if recs[i] then item_fields(out, p, cmsgpack.unpack(recs[i]), payloads[i]) end
  end
end
return out
"""
)

#: Claim the next item of this batch. ARGV: 3 lease seconds, 4 a new token, 5 '1' when
#: the call is tried again (an earlier try's claim, if it ran, is the claim).
#: Returns the claim (see claim_here), then, with an item, the batch's metadata JSON and
#: failure limit (false: none) (`Claim.batch`), then finished now (1/0).
CLAIM = (
    _COMMON
    + r"""
local t = clock()
local claim = (ARGV[5] == '1' and claimed_by(ARGV[4])) or claim_here(tonumber(ARGV[3]), ARGV[4], t)
flush()
if claim[1] == 1 then
  local batch = redis.call('HMGET', META, 'metadata', 'maxf')
  claim[#claim + 1] = batch[1]
  claim[#claim + 1] = batch[2]
end
claim[#claim + 1] = finished_now and 1 or 0
return claim
"""
)

#: End a leased attempt, then maybe claim the next item of the same batch.
#: ARGV: 3 key, 4 token, 5 state, 6 result, 7 error JSON ('' for none), 8 delay,
#: 9 lease seconds of the next claim ('' for no claim), 10 the next claim's token,
#: 11 the item's history ('' to keep it), 12 the leased attempt when the call is tried
#: again ('': the first try), so that what an earlier try did is not refused or redone.
#: Returns {accepted, finished now (1/0)} followed by the claim's fields; accepted is 1 or
#: 0, or on a try made again that finds the item held by nobody, {its state, its attempt}:
#: whether an earlier try landed is decided by the caller (`Outcome.landed`).
FINISH = (
    _COMMON
    + r"""
local t = clock()
local accepted = 0
local pos, rec = leased(ARGV[3], ARGV[4])
if pos then
  accepted = 1
  local state = ARGV[5]
  if state == 'queued' and get_meta().cancel_at then state = 'cancelled' end
  if ARGV[7] ~= '' then rec[ERROR] = ARGV[7] end
  if ARGV[11] ~= '' then rec[HISTORY] = ARGV[11] end
  if state == 'succeeded' then
    rec[RESULT] = ARGV[6]  -- kept in the record: a succeeded item never changes again
    rec[PROGRESS] = 1
    rec[ERROR] = false
  end
  if state == 'queued' then
    redis.call('ZREM', RUNNING, pos)
    local not_before = t + math.max(0, tonumber(ARGV[8]))
    rec[STATE] = 'queued'
    rec[TOKEN] = false
    rec[DEADLINE] = not_before
    rec[PROGRESS] = 0
    rec[MESSAGE] = false
    rec[UPDATED] = t
    save(pos, rec)
    if not_before <= t then
      redis.call('ZADD', READY, pos, pos)
    else
      redis.call('ZADD', DELAYED, fmt(not_before), pos)
      redis.call('ZADD', DELAYPOS, pos, pos)
    end
    bump('running', 'queued', 1, t)
    announce_work()
  else
    end_item(pos, rec, state, t)
    bump('running', state, 1, t)
  end
  publish()
elseif ARGV[12] ~= '' then
  -- Maybe an earlier try did it: the item, held by nobody, as it ended.
  local p = redis.call('HGET', KEYMAP, ARGV[3])
  local r = p and load(p)
  if r and not r[TOKEN] then accepted = {r[STATE], r[ATTEMPT]} end
end
local claim = {0}
if ARGV[9] ~= '' then
  claim = (ARGV[12] ~= '' and claimed_by(ARGV[10])) or claim_here(tonumber(ARGV[9]), ARGV[10], t)
end
flush()
table.insert(claim, 1, finished_now and 1 or 0)
table.insert(claim, 1, accepted)
return claim
"""
)

#: End several leased attempts of the batch as succeeded, then claim up to n items of it
#: (group commit). ARGV: 3 lease seconds of the claims, 4 their token (one for the group:
#: each claim's lease is its key and the token), 5 n, 6 '1' when the call is tried again,
#: 7.. four per success: key, token, result, history ('' to keep it).
#: Returns {finished now (1/0), the last claim's code (see claim_here), one entry per
#: success: 1 or 0, or, tried again and held by nobody, {its state, its attempt} (see
#: FINISH); then five fields per claim: key, position, payload, attempt, history}.
FINISH_GROUP = (
    _COMMON
    + r"""
local t = clock()
local token = ARGV[4]
local out = {0, 0}
local done = 0
for i = 7, #ARGV, 4 do
  local pos, rec = leased(ARGV[i], ARGV[i + 1])
  if pos then
    rec[RESULT] = ARGV[i + 2]
    if ARGV[i + 3] ~= '' then rec[HISTORY] = ARGV[i + 3] end
    rec[PROGRESS] = 1
    rec[ERROR] = false
    end_item(pos, rec, 'succeeded', t)
    done = done + 1
    out[#out + 1] = 1
  elseif ARGV[6] == '1' then
    local p = redis.call('HGET', KEYMAP, ARGV[i])
    local r = p and load(p)
    out[#out + 1] = (r and not r[TOKEN]) and {r[STATE], r[ATTEMPT]} or 0
  else
    out[#out + 1] = 0
  end
end
if done > 0 then
  bump('running', 'succeeded', done, t)
  publish()
end
local held = {}
if ARGV[6] == '1' then
  -- An earlier try ran (its reply lost): its claims are the items holding the token.
  for _, pos in ipairs(redis.call('ZRANGE', RUNNING, 0, -1)) do
    local rec = load(pos)
    if rec and rec[TOKEN] == token then held[#held + 1] = tonumber(pos) end
  end
  table.sort(held)
end
if #held > 0 then
  for _, pos in ipairs(held) do
    local rec = load(pos)
    local n = #out
    out[n + 1], out[n + 2] = rec[KEY], pos
    out[n + 3] = redis.call('HGET', PAYLOADS, pos)
    out[n + 4], out[n + 5] = rec[ATTEMPT], rec[HISTORY] or false
  end
else
  -- A lease that lapses at once would make an item of this group claimable again by the
  -- group's next claim: such claims hold for an hour until the group has claimed.
  local lease = tonumber(ARGV[3])
  local first = lease > 0 and lease or 3600
  local claimed = {}
  for _ = 1, tonumber(ARGV[5]) do
    local claim = claim_here(first, token, t)
    out[2] = claim[1]
    if claim[1] ~= 1 then break end
    local n = #out
    for f = 2, 6 do out[n + f - 1] = claim[f] end
    claimed[#claimed + 1] = claim[3]
  end
  if first ~= lease then
    for _, pos in ipairs(claimed) do
      local rec = load(pos)
      rec[DEADLINE] = t + lease
      save(pos, rec)
      redis.call('ZADD', RUNNING, fmt(t + lease), pos)
    end
  end
end
flush()
out[1] = finished_now and 1 or 0
return out
"""
)

#: Heartbeat or progress of a running item. ARGV: 3 key, 4 token, 5 lease seconds
#: ('' to keep the deadline), 6 progress ('' for a heartbeat), 7 message, 8 '1' when
#: there is a message. Returns {held (1/0), cancel requested (1/0)}.
EXTEND = (
    _COMMON
    + r"""
local pos, rec = leased(ARGV[3], ARGV[4])
if not pos then return {0, 0} end
local t = clock()
if ARGV[5] ~= '' then
  rec[DEADLINE] = t + tonumber(ARGV[5])
  redis.call('ZADD', RUNNING, fmt(rec[DEADLINE]), pos)
end
if ARGV[6] ~= '' then
  rec[PROGRESS] = tonumber(ARGV[6])
  if ARGV[8] == '1' then rec[MESSAGE] = ARGV[7] else rec[MESSAGE] = false end
  rec[UPDATED] = t
  publish()
end
save(pos, rec)
return {1, redis.call('HEXISTS', META, 'cancel_at')}
"""
)

#: Request a batch's cancel. ARGV: 3 the reason ('' for none).
#: Returns {found (0/1), finished now (1/0)}.
CANCEL = (
    _COMMON
    + r"""
local m = get_meta()
if not m then return {0, 0} end
if m.finished then return {1, 0} end
local t = clock()
if not m.cancel_at then
  set_meta('cancel_at', t)
  if ARGV[3] ~= '' then set_meta('cancel_reason', ARGV[3]) end
end
local queued = 0
for _, set in ipairs({READY, DELAYPOS}) do
  for _, pos in ipairs(redis.call('ZRANGE', set, 0, -1)) do
    end_item(pos, load(pos), 'cancelled', t)
    queued = queued + 1
  end
end
redis.call('DEL', READY, DELAYED, DELAYPOS)
local expired = redis.call('ZRANGEBYSCORE', RUNNING, '-inf', fmt(t))
for _, pos in ipairs(expired) do end_item(pos, load(pos), 'cancelled', t) end
bump('queued', 'cancelled', queued, t)
bump('running', 'cancelled', #expired, t)
set_meta('updated', t)
flush()
publish()
return {1, finished_now and 1 or 0}
"""
)

#: Claim a finished batch's completion hook. ARGV: 3 lease seconds, 4 token.
#: Returns {code, record}: 0 not due, 1 claimed, 2 no such batch, 3 hook already done.
HOOK_CLAIM = (
    _COMMON
    + r"""
local m = redis.call('HMGET', META, 'id', 'finished', 'hook_done', 'hook_token', 'hook_deadline')
if not m[1] then return {2} end
if not m[2] then return {0} end
if m[3] then return {3} end
local t = clock()
-- Leased by another (a retry of this same claim, its reply lost, finds its own token).
if m[4] and m[4] ~= ARGV[4] and tonumber(m[5]) > t then return {0} end
redis.call('HSET', META, 'hook_token', ARGV[4], 'hook_deadline', fmt(t + tonumber(ARGV[3])))
return {1, record()}
"""
)

#: Acknowledge a completion hook. ARGV: 3 token. Returns 1 when the token is current: the
#: token stays, so that a retry whose first try landed (its reply lost) is told 1 again.
HOOK_ACK = (
    _COMMON
    + r"""
if redis.call('HGET', META, 'hook_token') ~= ARGV[3] then return 0 end
redis.call('HSET', META, 'hook_done', '1')
redis.call('HDEL', META, 'hook_deadline')
return 1
"""
)

#: Delete a key only while it still holds a value (an idempotency key: KEYS[1], the
#: batch id it must name: ARGV[1]).
RELEASE_KEY = r"""
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

#: Every script by name: what a storage registers when it opens.
SCRIPTS = {
    "CHUNK": CHUNK,
    "COMMIT": COMMIT,
    "RECORD": RECORD,
    "ITEM": ITEM,
    "ITEMS": ITEMS,
    "CLAIM": CLAIM,
    "FINISH": FINISH,
    "FINISH_GROUP": FINISH_GROUP,
    "EXTEND": EXTEND,
    "CANCEL": CANCEL,
    "HOOK_CLAIM": HOOK_CLAIM,
    "HOOK_ACK": HOOK_ACK,
    "RELEASE_KEY": RELEASE_KEY,
}
