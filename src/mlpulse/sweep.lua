-- Expire pending halves whose partner did not arrive in time and count them as unmatched.
-- KEYS: pending:t, pending:p, deadline:t, deadline:p, agg, version (mlpulse/keys.py).
-- ARGV: now, the most to expire, and the prefix and lifetime of the per-minute rates.
local PENDING = {t = KEYS[1], p = KEYS[2]}
local DEADLINE = {t = KEYS[3], p = KEYS[4]}
local AGG, VERSION = KEYS[5], KEYS[6]
local now = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local total = 0
for _, side in ipairs({"t", "p"}) do
  local ids = redis.call("ZRANGEBYSCORE", DEADLINE[side], "-inf", now, "LIMIT", 0, limit)
  if #ids > 0 then
    redis.call("HDEL", PENDING[side], unpack(ids))
    redis.call("ZREM", DEADLINE[side], unpack(ids))
    redis.call("HINCRBY", AGG, "unmatched_" .. side, #ids)
    total = total + #ids
  end
end
if total > 0 then
  redis.call("INCR", VERSION)
  local rates = ARGV[3] .. (math.floor(now / 60) * 60)
  redis.call("HINCRBY", rates, "unmatched", total)
  redis.call("EXPIRE", rates, tonumber(ARGV[4]))
end
return total
