-- Write one evaluation's outcome, but only while this evaluator holds the lease: a process
-- that lost it (paused, cut off) can never write over the one that took over.
-- KEYS: lease, active alerts (hash), history (list, newest first), outbox (list).
-- ARGV: this evaluator's id, the lease in ms, the history bound, then a JSON document
-- {"set": {fingerprint: state}, "del": [fingerprint], "history": [...], "outbox": [...]}.
if redis.call("GET", KEYS[1]) ~= ARGV[1] then return 0 end
redis.call("PEXPIRE", KEYS[1], tonumber(ARGV[2]))
local change = cjson.decode(ARGV[4])
for fp, state in pairs(change["set"]) do
  -- An acknowledgement (ack.lua) that came after this evaluation read the states is kept,
  -- unless the alert has started a new episode since. The text search only saves decoding
  -- states that carry none.
  local current = redis.call("HGET", KEYS[2], fp)
  if current and string.find(current, '"acked_by"', 1, true) then
    local was, now_is = cjson.decode(current), cjson.decode(state)
    if was["acked_by"] and not now_is["acked_by"] and was["episode"] == now_is["episode"] then
      now_is["acked_by"], now_is["acked_at"] = was["acked_by"], was["acked_at"]
      state = cjson.encode(now_is)
    end
  end
  redis.call("HSET", KEYS[2], fp, state)
end
for _, fp in ipairs(change["del"]) do redis.call("HDEL", KEYS[2], fp) end
for _, h in ipairs(change["history"]) do redis.call("LPUSH", KEYS[3], h) end
if #change["history"] > 0 then redis.call("LTRIM", KEYS[3], 0, tonumber(ARGV[3]) - 1) end
for _, n in ipairs(change["outbox"]) do redis.call("RPUSH", KEYS[4], n) end
return 1
