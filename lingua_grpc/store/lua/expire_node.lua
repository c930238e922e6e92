-- expire_node: removes a node whose lease lapsed (no heartbeat for a whole lease). Idempotent; any instance
-- may run it for any node, so nodes held by a dead scheduler instance are cleaned up too.
-- KEYS[1] node hash      KEYS[2] node lease      KEYS[3] node index (set)      KEYS[4] registry version
-- KEYS[5] node slots
-- ARGV[1] node id
-- Returns {1 when removed else 0, registry version}. A node whose lease is alive is left alone.
local version = tonumber(redis.call('GET', KEYS[4]) or '0')
if redis.call('EXISTS', KEYS[2]) == 1 then
  return {0, version}
end
local was_member = redis.call('SREM', KEYS[3], ARGV[1])
local had_hash = redis.call('DEL', KEYS[1])
redis.call('DEL', KEYS[5])
if was_member == 0 and had_hash == 0 then
  return {0, version}
end
version = redis.call('INCR', KEYS[4])
return {1, version}
