-- Acknowledge an active alert: its state gets `acked_by` and `acked_at`, nothing else moves.
-- KEYS: active alerts (hash). ARGV: fingerprint, user, time (epoch seconds).
-- Returns the state as now stored, or nil when no alert has that fingerprint.
local raw = redis.call("HGET", KEYS[1], ARGV[1])
if not raw then return nil end
local state = cjson.decode(raw)
state["acked_by"] = ARGV[2]
state["acked_at"] = tonumber(ARGV[3])
local updated = cjson.encode(state)
redis.call("HSET", KEYS[1], ARGV[1], updated)
return updated
