-- Store users' own messages for the gateway, a whole burst in one call.
-- ARGV: prefix, keep, ttl, then (user, score, payload) triples.
-- Every gateway sees every event: ZADD NX keeps one copy however many add it.
local prefix, keep, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local touched = {}
for i = 4, #ARGV, 3 do
  local key = prefix .. ARGV[i]
  redis.call("ZADD", key, "NX", ARGV[i + 1], ARGV[i + 2])
  touched[key] = true
end
for key in pairs(touched) do
  redis.call("ZREMRANGEBYRANK", key, 0, -keep - 1)
  redis.call("EXPIRE", key, ttl)
end
return #ARGV
