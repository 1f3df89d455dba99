"""
The Lua scripts the Redis broker runs, and the key layout they share.

Every key starts with the broker's prefix ``P`` (``relayd:`` unless the URL
says ``?prefix=``):

    P s:<id>     hash   epoch, last (last id assigned), delivered (highest id
                        written to a connection, or routed to a live one
                        with nothing before it owed: see AHEAD in PUBLISH),
                        claims (takeover counter),
                        touched (ms: when PUBLISH last pushed back the expiry
                        of this and the list); expires ``history-ttl`` to
                        1.1 × ``history-ttl`` after its last use (see KEEP)
    P h:<id>     list   kept messages of the current epoch, oldest first, each
                        ``<expires-ms> <id> <frame>``; the newest ``history-size``
                        are what is kept (see TRIM);
                        expires as its stream does (each entry's own
                        ``<expires-ms>`` is what bounds what a replay gives)
    P p:<id>     hash   presence: node name -> connections of <id> on that node
    P i:<sender> <key>  string  the reply to a message sent with an
                        idempotency key (``<message id> <outcome letters>
                        <receiver ids…>``); expires ``history-ttl`` after it
    P over       hash   node name -> until when (ms) that node's subscription
                        is behind: messages for the ids it holds are refused
    P nodes      zset   node name -> last heartbeat (ms, Redis clock)
    P n:<node>   channel  messages (several records a message, one a line),
                          takeovers and probes for one node
    P all        channel  broadcasts

TRIM: PUBLISH trims a list back to ``history-size`` entries only once it
holds a tenth more (``trim_at``), not with an LTRIM per message once it is
full; REPLAY and FETCH read only its newest ``history-size`` entries, so
what a client gets is the same.

KEEP: a stream's keys are kept for ``history-ttl`` plus a tenth of it from
their last use, and PUBLISH pushes that back at most once per tenth (its
``touched`` field), not for every message: two ``PEXPIRE`` calls fewer per
message, which were a fifth of Redis's time per message under load. Every
other script that uses a stream pushes its expiry back to the same horizon,
so a stream always outlives its last use by at least ``history-ttl``.

A node counts as alive while its heartbeat is younger than ``dead`` ms;
presence entries of dead nodes are removed by the next script that reads
them. Scripts read the time from Redis (``TIME``), so node clocks do not
matter (but for the pacing's lag, a record's stamp on Redis's clock against
the receiving node's: see pacing.py). When an id's stream hash is missing (expired, evicted, or Redis lost
its data) it is created with the epoch the caller proposes and its old list
is deleted: an ``(epoch, id)`` pair never repeats.
"""

from __future__ import annotations

_PRELUDE = """
-- The time on Redis's clock: in ms, and as whole µs in text (a record's publish stamp).
local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), t[1] .. string.format('%06d', tonumber(t[2]))
end

local function now_ms()
  return (clock())
end

local function slack_ms(ttl)
  return math.floor(ttl / 10)
end

local function keep_ms(ttl)
  return ttl + slack_ms(ttl)
end

local function trim_at(size)
  return size + math.max(1, math.floor(size / 10))
end

-- The newest size entries of a kept list (see TRIM; Redis refuses '-0' as an index).
local function newest(hk, size)
  if size > 0 then return redis.call('LRANGE', hk, -size, -1) end
  return {}
end

local function new_stream(sk, hk, candidate)
  redis.call('HSET', sk, 'epoch', candidate, 'last', 0, 'delivered', 0, 'claims', 0)
  redis.call('DEL', hk)
end

local function stream(sk, hk, candidate, ttl)
  local epoch = redis.call('HGET', sk, 'epoch')
  if not epoch then
    epoch = candidate
    new_stream(sk, hk, candidate)
  end
  redis.call('PEXPIRE', sk, keep_ms(ttl))
  return epoch
end

local function holders(pk, nodes, now, dead)
  local found = {}
  local fields = redis.call('HGETALL', pk)
  for j = 1, #fields, 2 do
    local seen = redis.call('ZSCORE', nodes, fields[j])
    if seen and tonumber(seen) > now - dead then
      found[#found + 1] = {fields[j], tonumber(fields[j + 1])}
    else
      redis.call('HDEL', pk, fields[j])
    end
  end
  return found
end
"""

# Several messages in one call, in order (as if each had a call of its own).
# KEYS: nodes, over, then the idempotency key of each message that has one,
# in order. ARGV: key prefix P, size, ttl ms, dead ms, then per message: its
# number of receivers, received (when its POST arrived, µs), mid, tail, message
# id, 1 when it has an idempotency key (else 0), then per receiver: id,
# candidate epoch. A receiver's keys are P s:<id>, P h:<id> and P p:<id>
# (made here, not sent: three arguments fewer per receiver to encode and
# parse; relayd runs on one Redis, not a cluster).
# The frame is '{"type":"message","id":' .. n .. mid .. receiver .. tail.
# Each node holding a receiver gets one PUBLISH for the call: its records,
# in order, joined by newlines (frames are compact JSON: they have none).
# A record is 'm' or, when the message already counts as delivered, 'w'
# (see AHEAD), then '<epoch> <id> <receiver> <received> <published> <frame>'
# with the time this call ran on Redis's clock as published (µs): a node
# measures its subscription's lag from it (pacing.py), so a call that ran
# late because Redis was stalled does not count against the node. Returns
# one reply per message: its outcome letters, one per receiver in order
# (s: some node's subscriber got it, q: kept, d: neither); for a message
# with an idempotency key, '<message id> <letters> <receiver>...' (what a
# retry gets back): with the key already used, the first reply, and
# nothing is sent. When a node holding a receiver is behind (P over),
# 'overloaded', and nothing is sent.
PUBLISH = _PRELUDE + """
local nodes, over, prefix = KEYS[1], KEYS[2], ARGV[1]
local chan = prefix .. 'n:'
local size, ttl, dead = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local now, published = clock()
local keep, slack, trim = keep_ms(ttl), slack_ms(ttl), trim_at(size)
local alive, behind = {}, {}
local records, order = {}, {}
local replies, keyed_by, marked = {}, {}, {}

-- (HKEYS, not HGETALL: the counts are not needed here, and every value of
-- a reply becomes a Lua string)
local function live_holders(pk)
  local found = {}
  local names = redis.call('HKEYS', pk)
  for j = 1, #names do
    local name = names[j]
    local up = alive[name]
    if up == nil then
      local seen = redis.call('ZSCORE', nodes, name)
      up = seen ~= false and tonumber(seen) > now - dead
      alive[name] = up
    end
    if up then
      found[#found + 1] = name
    else
      redis.call('HDEL', pk, name)
    end
  end
  return found
end

local function is_behind(name)
  local late = behind[name]
  if late == nil then
    local until_ms = redis.call('HGET', over, name)
    late = until_ms ~= false and tonumber(until_ms) > now
    behind[name] = late
  end
  return late
end

-- The stream's epoch (created with the candidate when missing), its last id
-- and delivered watermark (as Redis keeps them: strings), and whether its
-- keys' expiry is due to be pushed back now (see KEEP: at most once per
-- slack; the caller writes 'touched').
local function touch(sk, hk, candidate)
  local s = redis.call('HMGET', sk, 'epoch', 'touched', 'last', 'delivered')
  local epoch = s[1]
  if not epoch then
    new_stream(sk, hk, candidate)
    return candidate, true, '0', '0'
  end
  return epoch, now - tonumber(s[2] or 0) > slack, s[3], s[4]
end

local function post(name, record)
  local list = records[name]
  if not list then
    list = {}
    records[name] = list
    order[#order + 1] = name
  end
  list[#list + 1] = record
end

-- NUMBERS: a number that becomes text (a concatenation, a redis.call
-- argument) is printed with '%.17g' by Lua and by Redis, the costliest step
-- of a message (about a tenth of Redis's instructions for it, callgrind):
-- ids are made text once, with '%d', and the per-call numbers before the
-- loop; a stream's last id and watermark stay the strings HMGET gave,
-- compared as strings (every writer stores them as plain integers).
local now_text, keep_text, expires = string.format('%d', now), string.format('%d', keep), string.format('%d ', now + ttl)
local tail_from = string.format('%d', -size)

-- One message: its reply now ('overloaded', or the first reply for its key),
-- or what the reply is made of once the records are published.
local function one(k, a, n)
  local received, mid, tail, message_id = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4]
  local stamps = received .. ' ' .. published .. ' '
  local ik = ARGV[a + 5] == '1' and KEYS[k] or nil
  if ik then
    if keyed_by[ik] then return {same = keyed_by[ik]} end
    local first = redis.call('GET', ik)
    if first then return first end
  end
  local found = {}
  for i = 1, n do
    found[i] = live_holders(prefix .. 'p:' .. ARGV[a + 4 + 2 * i])
    for _, name in ipairs(found[i]) do
      if is_behind(name) then return 'overloaded' end
    end
  end
  for i = 1, n do
    local rid, candidate = ARGV[a + 4 + 2 * i], ARGV[a + 5 + 2 * i]
    local sk, hk = prefix .. 's:' .. rid, prefix .. 'h:' .. rid
    local epoch, due, last, delivered = touch(sk, hk, candidate)
    local id = string.format('%d', last + 1)
    -- AHEAD: routed to a live holder with nothing before it owed, the message
    -- counts as delivered now (record 'w'); the holder's node lowers the mark
    -- again if no connection of its takes it (UNMARK), and so does the end of
    -- this script if no holder's subscriber gets the record.
    local ahead = #found[i] > 0 and delivered == last
    if ahead then
      delivered = id
      marked[#marked + 1], marked[#marked + 2], marked[#marked + 3] = sk, id, found[i]
    end
    if due then
      redis.call('HSET', sk, 'last', id, 'delivered', delivered, 'touched', now_text)
      redis.call('PEXPIRE', sk, keep_text)
    else
      redis.call('HSET', sk, 'last', id, 'delivered', delivered)
    end
    local frame = '{"type":"message","id":' .. id .. mid .. rid .. tail
    if size > 0 then
      local length = redis.call('RPUSH', hk, expires .. id .. ' ' .. frame)
      if length >= trim then
        redis.call('LTRIM', hk, tail_from, '-1')
      end
      if due or length == 1 then
        redis.call('PEXPIRE', hk, keep_text)
      end
    end
    local record = (ahead and 'w ' or 'm ') .. epoch .. ' ' .. id .. ' ' .. rid .. ' ' .. stamps .. frame
    for _, name in ipairs(found[i]) do post(name, record) end
  end
  if ik then keyed_by[ik] = #replies + 1 end
  return {message_id = message_id, ik = ik, found = found, n = n, a = a}
end

local k, a = 3, 5
while a <= #ARGV do
  local n = tonumber(ARGV[a])
  replies[#replies + 1] = one(k, a, n)
  if ARGV[a + 5] == '1' then k = k + 1 end
  a = a + 6 + 2 * n
end

local reached = {}
for _, name in ipairs(order) do
  reached[name] = redis.call('PUBLISH', chan .. name, table.concat(records[name], '\\n')) > 0
end
for m = 1, #marked, 3 do
  local got = false
  for _, name in ipairs(marked[m + 2]) do got = got or reached[name] end
  if not got then
    local id = tonumber(marked[m + 1])
    local delivered = tonumber(redis.call('HGET', marked[m], 'delivered'))
    if delivered >= id then redis.call('HSET', marked[m], 'delivered', id - 1) end
  end
end

-- A receiver's outcome letter: s (some node's subscriber got it), q (kept), d (neither).
local function letter(holders)
  for _, name in ipairs(holders) do
    if reached[name] then return 's' end
  end
  if size > 0 then return 'q' end
  return 'd'
end

for m, made in ipairs(replies) do
  if type(made) == 'table' and made.message_id then
    local reply
    if made.n == 1 then
      reply = letter(made.found[1])
    else
      local letters = {}
      for i = 1, made.n do letters[i] = letter(made.found[i]) end
      reply = table.concat(letters)
    end
    if made.ik then
      local receivers = {}
      for i = 1, made.n do receivers[i] = ARGV[made.a + 4 + 2 * i] end
      reply = made.message_id .. ' ' .. reply .. ' ' .. table.concat(receivers, ' ')
      redis.call('SET', made.ik, reply, 'PX', ttl)
    end
    replies[m] = reply
  end
end
for m, made in ipairs(replies) do
  if type(made) == 'table' then replies[m] = replies[made.same] end
end
return replies
"""

# KEYS: the broadcast's idempotency key, when it has one. ARGV: broadcast
# channel, received (µs), frame, message id, ttl ms. Publishes the record
# 'b <received> <published> <frame>', published on Redis's clock (µs, as
# PUBLISH stamps a message's); with a key, once: a retry gets the first
# reply. Returns '<message id>  ' (no receivers).
BROADCAST = _PRELUDE + """
local keyed = #KEYS > 0
if keyed then
  local first = redis.call('GET', KEYS[1])
  if first then return first end
end
local _, published = clock()
redis.call('PUBLISH', ARGV[1], 'b ' .. ARGV[2] .. ' ' .. published .. ' ' .. ARGV[3])
local reply = ARGV[4] .. '  '
if keyed then redis.call('SET', KEYS[1], reply, 'PX', tonumber(ARGV[5])) end
return reply
"""

# KEYS: stream, list. ARGV: candidate epoch, ttl ms, size.
# Returns {epoch, last, delivered, now, entry...}: the newest size entries (see TRIM).
REPLAY = _PRELUDE + """
local epoch = stream(KEYS[1], KEYS[2], ARGV[1], tonumber(ARGV[2]))
local s = redis.call('HMGET', KEYS[1], 'last', 'delivered')
local out = {epoch, s[1], s[2], now_ms()}
for _, entry in ipairs(newest(KEYS[2], tonumber(ARGV[3]))) do
  out[#out + 1] = entry
end
return out
"""

# KEYS: per id: stream, list. ARGV: size.
# Returns {now, {epoch, last, entries (the newest size, see TRIM)} or {} per id}.
FETCH = _PRELUDE + """
local out = {now_ms()}
local size = tonumber(ARGV[1])
for i = 1, #KEYS, 2 do
  local s = redis.call('HMGET', KEYS[i], 'epoch', 'last')
  if s[1] then
    out[#out + 1] = {s[1], s[2], newest(KEYS[i + 1], size)}
  else
    out[#out + 1] = {}
  end
end
return out
"""

# KEYS: stream, list, presence, nodes.
# ARGV: node, policy, max per id, this node's count (with the new one),
# dead ms, candidate epoch, ttl ms, channel prefix, client id.
# Returns {admitted (0/1), takeover sequence (replace) or 0}.
CLAIM = _PRELUDE + """
local node, policy, count = ARGV[1], ARGV[2], tonumber(ARGV[4])
local ttl = tonumber(ARGV[7])
local now = now_ms()
stream(KEYS[1], KEYS[2], ARGV[6], ttl)
local found = holders(KEYS[3], KEYS[4], now, tonumber(ARGV[5]))
local others = 0
for _, holder in ipairs(found) do
  if holder[1] ~= node then others = others + holder[2] end
end
if policy == 'reject' and others > 0 then return {0, 0} end
if policy == 'fanout' and others + count > tonumber(ARGV[3]) then return {0, 0} end
local seq = 0
if policy == 'replace' then
  seq = redis.call('HINCRBY', KEYS[1], 'claims', 1)
  for _, holder in ipairs(found) do
    if holder[1] ~= node then
      redis.call('PUBLISH', ARGV[8] .. holder[1], 'k ' .. ARGV[9] .. ' ' .. seq)
      redis.call('HDEL', KEYS[3], holder[1])
    end
  end
end
redis.call('HSET', KEYS[3], node, count)
redis.call('PEXPIRE', KEYS[3], ttl)
return {1, seq}
"""

# KEYS: stream, presence. ARGV: node, this node's count, ttl ms.
RELEASE = _PRELUDE + """
if tonumber(ARGV[2]) > 0 then
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
else
  redis.call('HDEL', KEYS[2], ARGV[1])
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('PEXPIRE', KEYS[1], keep_ms(tonumber(ARGV[3])))
end
return 1
"""

# KEYS: nodes, then per id: stream, presence. ARGV: node, ttl ms, then the
# node's count per id. Marks the node alive and (re)writes its presence.
REGISTER = _PRELUDE + """
redis.call('ZADD', KEYS[1], now_ms(), ARGV[1])
for i = 2, #KEYS, 2 do
  local count = ARGV[2 + i / 2]
  redis.call('HSET', KEYS[i + 1], ARGV[1], count)
  redis.call('PEXPIRE', KEYS[i + 1], ARGV[2])
  if redis.call('EXISTS', KEYS[i]) == 1 then
    redis.call('PEXPIRE', KEYS[i], keep_ms(tonumber(ARGV[2])))
  end
end
return 1
"""

# KEYS: nodes. ARGV: node, dead ms.
# Returns 1 when the node had been taken for dead (it must register again).
HEARTBEAT = _PRELUDE + """
local now, dead = now_ms(), tonumber(ARGV[2])
local seen = redis.call('ZSCORE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - dead)
if seen and tonumber(seen) > now - dead then return 0 end
return 1
"""

# KEYS: streams. ARGV: per stream: epoch, id. Raises each 'delivered' watermark.
MARK = """
for i = 1, #KEYS do
  local s = redis.call('HMGET', KEYS[i], 'epoch', 'delivered')
  if s[1] == ARGV[2 * i - 1] and tonumber(s[2]) < tonumber(ARGV[2 * i]) then
    redis.call('HSET', KEYS[i], 'delivered', ARGV[2 * i])
  end
end
return 1
"""

# KEYS: streams. ARGV: per stream: epoch, id. Lowers each 'delivered'
# watermark below the id of a message PUBLISH counted as delivered (record
# 'w', see AHEAD) that no connection on the node took.
UNMARK = """
for i = 1, #KEYS do
  local s = redis.call('HMGET', KEYS[i], 'epoch', 'delivered')
  local id = tonumber(ARGV[2 * i])
  if s[1] == ARGV[2 * i - 1] and tonumber(s[2]) >= id then
    redis.call('HSET', KEYS[i], 'delivered', id - 1)
  end
end
return 1
"""

# KEYS: over. ARGV: node, ms. This node's subscription is behind for the next ms.
BEHIND = _PRELUDE + """
redis.call('HSET', KEYS[1], ARGV[1], now_ms() + tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[1], 60000)
return 1
"""

# KEYS: nodes, then presences. ARGV: node. A node leaving for good.
LEAVE = """
redis.call('ZREM', KEYS[1], ARGV[1])
for i = 2, #KEYS do
  redis.call('HDEL', KEYS[i], ARGV[1])
end
return 1
"""
