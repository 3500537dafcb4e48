-- Join a batch of halves atomically. Each half is {side, id, value, version, meta}:
-- side "t" (y_true) or "p" (y_pred); value as exact decimal text; meta as text.
-- A stored half is "value\nversion\nmeta" and a done marker "t\np": value, meta, t and p
-- are numbers written by Python (meta may be empty), so the first and the last line break
-- are the separators, and the version between them may hold anything, line breaks too.
-- Nothing is written when the outbox is over its bound (the CSV sink is not keeping up,
-- e.g. a full disk), in entries or in bytes: the caller holds its messages unacked.
--
-- Done markers live in generations as long as the done TTL, each spread over small
-- hashes (done:<generation>:<shards>:<shard>, id -> "t\np"), about 64 ids to a hash, so
-- that Redis keeps each one as a compact listpack: some 60 bytes an id rather than some
-- 200 for a key of its own with an expiry. A lookup reads the current and the previous
-- generation (two reads, as many as the per-id keys took: one for each half), so an id
-- is remembered for at least the done TTL and at most twice that, and each hash expires
-- whole once no lookup can reach it. A generation's shard count is chosen when it
-- begins, from the previous generation's size and the last minute's joins; when it fills
-- past 96 ids a hash anyway (a burst, or the very first generation), a new epoch of eight
-- times the shards takes the writes, and lookups read every epoch.
-- done:meta holds, per generation g, "s:g" (the epochs' shard counts, "64 512"), "n:g"
-- (ids written) and "e:g" (ids written in the last epoch).
-- A half either waits in pending:<side> (with a deadline for the sweeper), completes a
-- pair, or is recognised as a duplicate or a conflict of one already seen. Completed
-- pairs are appended to the stream `joined` (the CSV sink's outbox) and counted in the
-- aggregates in the same step, so the log and the counters can never disagree.
-- KEYS: pending:t, pending:p, deadline:t, deadline:p, joined, agg, hist, hist:meta,
-- by_version, recent, version (mlpulse/keys.py). ARGV: the prefixes of the per-id done
-- markers and the per-second windows, now, the TTLs, the histogram, the halves, the
-- outbox bound, the drift buckets' prefix, resolutions and lifetimes, and the prefix and
-- lifetime of the per-minute rate counts.
-- A y_pred half from a model role that profiles its versions has two more elements, when
-- it was scored and its estimated error; while it waits they are kept in its meta as
-- "send time;scored;estimated". Its label is also counted into the drift buckets of the
-- time it was scored (mlpulse/drift.py), and only the send time goes on to the log.
local PENDING = {t = KEYS[1], p = KEYS[2]}
local DEADLINE = {t = KEYS[3], p = KEYS[4]}
local JOINED, AGG, HIST, HIST_META = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local BY_VERSION, RECENT, VERSION = KEYS[9], KEYS[10], KEYS[11]
local DONE, SECOND = ARGV[1], ARGV[2]
local now = tonumber(ARGV[3])
local join_ttl = tonumber(ARGV[4])
local done_ttl = math.max(1, math.floor(tonumber(ARGV[5])))
local width = tonumber(ARGV[6])
local nbins = tonumber(ARGV[7])
local outbox_max, outbox_max_bytes = tonumber(ARGV[9]), tonumber(ARGV[10])
local DRIFT = ARGV[11]
local RES = {{tonumber(ARGV[12]), tonumber(ARGV[13])}, {tonumber(ARGV[14]), tonumber(ARGV[15])}}
local RATES, rates_ttl = ARGV[16], tonumber(ARGV[17])
-- Upper bounds, in seconds, of the label-delay bins (the last bin is open above).
local DELAYS = {0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200,
                21600, 86400, 604800}
local function delay_bin(d)
  for k = 1, #DELAYS do if d <= DELAYS[k] then return k - 1 end end
  return #DELAYS
end

if redis.call("XLEN", JOINED) > outbox_max
    or (redis.call("MEMORY", "USAGE", JOINED) or 0) > outbox_max_bytes then
  return {-1, 0, 0}
end
local halves = cjson.decode(ARGV[8])

local function split(s)
  local a = string.find(s, "\n", 1, true)
  local b = string.find(s, "\n[^\n]*$", a + 1)
  return string.sub(s, 1, a - 1), string.sub(s, a + 1, b - 1), string.sub(s, b + 1)
end

local function fmt(x) return string.format("%.17g", x) end

local rows = {}
local n, sum_abs, sum_sq, dup, conflict, max_err = 0, 0, 0, 0, 0, 0
local bins, versions, labelled = {}, {}, {}

-- A prediction's label is counted into the drift buckets of when it was scored. A model
-- batch shares one scoring time, so its buckets are looked up once, not once per event.
-- Each bucket also gets the labelled errors' squares and histogram, for the alert rules'
-- rmse and p95 per version. A prediction without an estimate (its version has no profile)
-- counts its label all the same, with an estimate of 0 that no reader uses.
local seen_scored, seen_ver, seen_buckets, seen_delay = nil, nil, {}, 0
-- Label delays by the time the label joins, pipeline-wide: counted into this minute.
local delays = {}
local function label_drift(ver, scored, est, err, bin)
  if scored ~= seen_scored or ver ~= seen_ver then
    seen_scored, seen_ver, seen_buckets = scored, ver, {}
    seen_delay = delay_bin(now - scored)
    for _, r in ipairs(RES) do
      -- A label later than a bucket's lifetime has nothing left to count into.
      if now - scored < r[2] then
        local key = DRIFT .. ver .. ":" .. r[1] .. ":" .. (math.floor(scored / r[1]) * r[1])
        local l = labelled[key]
        if not l then l = {0, 0, 0, r[2], 0, {}}; labelled[key] = l end
        seen_buckets[#seen_buckets + 1] = l
      end
    end
  end
  for _, l in ipairs(seen_buckets) do
    l[1] = l[1] + 1; l[2] = l[2] + err; l[3] = l[3] + est; l[5] = l[5] + err * err
    l[6][bin] = (l[6][bin] or 0) + 1
  end
  delays[seen_delay] = (delays[seen_delay] or 0) + 1
end

-- A waiting prediction's meta is "ts;scored;est": split it back.
local function unpack_meta(meta)
  local a = string.find(meta, ";", 1, true)
  if not a then return meta, nil, nil end
  local b = string.find(meta, ";", a + 1, true)
  if not b then return string.sub(meta, 1, a - 1), nil, nil end
  return string.sub(meta, 1, a - 1), tonumber(string.sub(meta, a + 1, b - 1)),
      tonumber(string.sub(meta, b + 1))
end

-- Done markers: the generations a lookup reads, and the one new markers go to.
local GENERATIONS = 1
local gen_len = math.max(1, math.ceil(done_ttl / GENERATIONS))
local gen = math.floor(now / gen_len)
local META = DONE .. "meta"
local FILL, TOO_FULL, GROWTH, MIN_SHARDS = 64, 96, 8, 64
local function parse_epochs(text)
  local list = {}
  for n in string.gmatch(text or "", "%d+") do list[#list + 1] = tonumber(n) end
  return list
end
-- The shard counts of each generation a lookup reads, the previous one's size, and how
-- far the current one and its last epoch have filled.
local fields = {}
for g = gen - GENERATIONS, gen do fields[#fields + 1] = "s:" .. g end
fields[#fields + 1] = "n:" .. (gen - 1)
fields[#fields + 1] = "n:" .. gen
fields[#fields + 1] = "e:" .. gen
local meta_now = redis.call("HMGET", META, unpack(fields))
local epochs = {}
for k = 0, GENERATIONS do epochs[gen - GENERATIONS + k] = parse_epochs(meta_now[k + 1]) end
local previous_size = tonumber(meta_now[GENERATIONS + 2] or "0")
local written = tonumber(meta_now[GENERATIONS + 3] or "0")
local in_epoch = tonumber(meta_now[GENERATIONS + 4] or "0")
local new_markers, touched = 0, {}
local function shard_hash(id) return tonumber(string.sub(redis.sha1hex(id), 1, 7), 16) end

-- Every (generation, epoch) a lookup reads, newest first, as its key prefix and shard
-- count: the prefixes are built once a call, not once an id.
local readable = {}
local function list_readable()
  readable = {}
  for g = gen, gen - GENERATIONS, -1 do
    for k = #epochs[g], 1, -1 do
      readable[#readable + 1] = {DONE .. g .. ":" .. epochs[g][k] .. ":", epochs[g][k]}
    end
  end
end
list_readable()

local function find_done(id)
  if #readable == 0 then return nil end
  local h = shard_hash(id)
  for _, r in ipairs(readable) do
    local v = redis.call("HGET", r[1] .. (h % r[2]), id)
    if v then return v end
  end
  return nil
end

local function mark_done(id, value)
  local mine = epochs[gen]
  if #mine == 0 then
    -- A new generation: shards for as many ids as the last one held, or as the last
    -- minute's joins would make over a whole generation, whichever is more.
    local last_minute = tonumber(redis.call("HGET", RATES .. (math.floor(now / 60) * 60 - 60),
                                            "joined") or "0")
    local expected = math.max(previous_size, last_minute * gen_len / 60)
    mine[1] = math.max(MIN_SHARDS, math.ceil(expected / FILL))
    in_epoch = 0
    local old = gen - GENERATIONS - 1
    redis.call("HDEL", META, "s:" .. old, "n:" .. old, "e:" .. old,
               "s:" .. (old - 1), "n:" .. (old - 1), "e:" .. (old - 1))
    list_readable()
  elseif in_epoch >= mine[#mine] * TOO_FULL then
    mine[#mine + 1] = mine[#mine] * GROWTH
    in_epoch = 0
    list_readable()
  end
  local key = readable[1][1] .. (shard_hash(id) % readable[1][2])
  redis.call("HSET", key, id, value)
  touched[key] = true
  new_markers = new_markers + 1
  in_epoch = in_epoch + 1
end

for i = 1, #halves do
  local h = halves[i]
  local side, id, value, version, meta, scored, est = h[1], h[2], h[3], h[4], h[5], h[6], h[7]
  local other = (side == "t") and "p" or "t"
  -- A waiting partner means the id was never joined: a half is only stored after a
  -- lookup of the done markers found nothing, and joining removes it. So the markers are
  -- read once per event, for its first half, not for its second.
  local partner = redis.call("HGET", PENDING[other], id)
  local done = (not partner) and find_done(id)
  if done then
    local nl = string.find(done, "\n", 1, true)
    local seen = (side == "t") and string.sub(done, 1, nl - 1) or string.sub(done, nl + 1)
    if seen == value then dup = dup + 1 else conflict = conflict + 1 end
  else
    if partner then
      local pv, pver, pmeta = split(partner)
      redis.call("HDEL", PENDING[other], id)
      redis.call("ZREM", DEADLINE[other], id)
      local t, p, tmeta, pmeta2, ver, pscored, pest
      if side == "t" then
        t, p, tmeta, ver = value, pv, meta, pver
        pmeta2, pscored, pest = unpack_meta(pmeta)
      else
        t, p, tmeta, pmeta2, ver, pscored, pest = pv, value, pmeta, meta, version, scored, est
      end
      mark_done(id, t .. "\n" .. p)
      local err = math.abs(tonumber(t) - tonumber(p))
      n = n + 1
      sum_abs = sum_abs + err
      sum_sq = sum_sq + err * err
      if err > max_err then max_err = err end
      local b = math.floor(err / width)
      if b >= nbins then b = nbins end
      bins[b] = (bins[b] or 0) + 1
      local v = versions[ver]
      if not v then v = {0, 0, 0}; versions[ver] = v end
      v[1] = v[1] + 1; v[2] = v[2] + err; v[3] = v[3] + err * err
      if pscored then label_drift(ver, pscored, pest or 0, err, b) end
      rows[#rows + 1] = {id, t, p, ver, tmeta, pmeta2}
    else
      local mine = redis.call("HGET", PENDING[side], id)
      if mine then
        local mv = split(mine)
        if mv == value then dup = dup + 1 else conflict = conflict + 1 end
      else
        if scored then meta = meta .. ";" .. fmt(scored) .. ";" .. (est and fmt(est) or "") end
        redis.call("HSET", PENDING[side], id, value .. "\n" .. version .. "\n" .. meta)
        redis.call("ZADD", DEADLINE[side], now + join_ttl, id)
      end
    end
  end
end

local agg = AGG
if n > 0 then
  redis.call("XADD", JOINED, "*", "at", fmt(now), "rows", cjson.encode(rows))
  redis.call("HINCRBY", agg, "count", n)
  redis.call("HINCRBYFLOAT", agg, "sum_abs", fmt(sum_abs))
  redis.call("HINCRBYFLOAT", agg, "sum_sq", fmt(sum_sq))
  local old_max = tonumber(redis.call("HGET", agg, "max_abs") or "0")
  if max_err > old_max then redis.call("HSET", agg, "max_abs", fmt(max_err)) end
  redis.call("HSET", HIST_META, "width", fmt(width), "bins", nbins)
  for b, c in pairs(bins) do redis.call("HINCRBY", HIST, b, c) end
  for ver, v in pairs(versions) do
    redis.call("HINCRBY", BY_VERSION, ver .. "|count", v[1])
    redis.call("HINCRBYFLOAT", BY_VERSION, ver .. "|sum_abs", fmt(v[2]))
    redis.call("HINCRBYFLOAT", BY_VERSION, ver .. "|sum_sq", fmt(v[3]))
  end
  local sec = SECOND .. math.floor(now)
  redis.call("HINCRBY", sec, "count", n)
  redis.call("HINCRBYFLOAT", sec, "sum_abs", fmt(sum_abs))
  redis.call("HINCRBYFLOAT", sec, "sum_sq", fmt(sum_sq))
  redis.call("EXPIRE", sec, 3600)
  -- The latest predictions, newest first, for people to look at.
  local recent = RECENT
  for i = math.max(1, #rows - 49), #rows do
    local r = rows[i]
    redis.call("LPUSH", recent, cjson.encode({r[1], r[2], r[3], r[4], fmt(now)}))
  end
  redis.call("LTRIM", recent, 0, 49)
end
for key, l in pairs(labelled) do
  redis.call("HINCRBY", key, "ln", l[1])
  redis.call("HINCRBYFLOAT", key, "lerr", fmt(l[2]))
  redis.call("HINCRBYFLOAT", key, "lest", fmt(l[3]))
  redis.call("HINCRBYFLOAT", key, "lsq", fmt(l[5]))
  for bin, c in pairs(l[6]) do redis.call("HINCRBY", key, "lh" .. bin, c) end
  redis.call("EXPIRE", key, l[4], "NX")
end
if n > 0 then
  local rates = RATES .. (math.floor(now / 60) * 60)
  redis.call("HINCRBY", rates, "joined", n)
  for bin, c in pairs(delays) do redis.call("HINCRBY", rates, "ld" .. bin, c) end
  redis.call("EXPIRE", rates, rates_ttl)
end
if new_markers > 0 then
  -- Every marker of this generation stays readable until no lookup reads it any more.
  -- (Relative to `now`, as the lookups are: a clock apart from Redis's moves nothing.)
  local left = math.ceil((gen + GENERATIONS + 1) * gen_len - now)
  for key in pairs(touched) do redis.call("EXPIRE", key, left) end
  local list = {}
  for k, shards in ipairs(epochs[gen]) do list[k] = tostring(shards) end
  redis.call("HSET", META, "s:" .. gen, table.concat(list, " "), "n:" .. gen,
             written + new_markers, "e:" .. gen, in_epoch)
  redis.call("EXPIRE", META, left)
end
if dup > 0 then redis.call("HINCRBY", agg, "duplicates", dup) end
if conflict > 0 then redis.call("HINCRBY", agg, "conflicts", conflict) end
if n > 0 or dup > 0 or conflict > 0 then redis.call("INCR", VERSION) end
return {n, dup, conflict}
