-- Add one scored batch to its drift buckets, fine and coarse, and note the version as seen.
-- KEYS: drift:versions. ARGV: version, now, fine key, fine TTL, coarse key, coarse TTL,
-- the number of integer pairs, then (field, count) integer pairs, then (field, amount)
-- float pairs. Only counts are added, so the order of batches does not matter.
local version, now = ARGV[1], tonumber(ARGV[2])
local buckets = {{ARGV[3], tonumber(ARGV[4])}, {ARGV[5], tonumber(ARGV[6])}}
local n_int = tonumber(ARGV[7])
local first_float = 8 + 2 * n_int
for _, b in ipairs(buckets) do
  local key = b[1]
  for i = 8, first_float - 1, 2 do
    redis.call("HINCRBY", key, ARGV[i], ARGV[i + 1])
  end
  for i = first_float, #ARGV, 2 do
    redis.call("HINCRBYFLOAT", key, ARGV[i], ARGV[i + 1])
  end
  redis.call("EXPIRE", key, b[2])
end
redis.call("ZADD", KEYS[1], now, version)
return 1
