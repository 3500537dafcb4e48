-- Expire pending halves whose partner did not arrive in time and count them as unmatched.
local P = ARGV[1]
local now = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
local total = 0
for _, side in ipairs({"t", "p"}) do
  local ids = redis.call("ZRANGEBYSCORE", P .. "deadline:" .. side, "-inf", now, "LIMIT", 0, limit)
  if #ids > 0 then
    redis.call("HDEL", P .. "pending:" .. side, unpack(ids))
    redis.call("ZREM", P .. "deadline:" .. side, unpack(ids))
    redis.call("HINCRBY", P .. "agg", "unmatched_" .. side, #ids)
    total = total + #ids
  end
end
if total > 0 then redis.call("INCR", P .. "version") end
return total
