-- deregister_node: removes a node that left (clean close or broken stream). Idempotent.
-- KEYS[1] node hash      KEYS[2] node lease      KEYS[3] node index (set)      KEYS[4] registry version
-- KEYS[5] node slots (its reserved job attempts go with it; the jobs are re-dispatched by the scheduler)
-- ARGV[1] node id        ARGV[2] connection id, or '' to remove whatever connection holds it
-- Returns {1 when removed else 0, registry version}. A stale connection cannot remove a newer registration.
local version = tonumber(redis.call('GET', KEYS[4]) or '0')
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {0, version}
end
if ARGV[2] ~= '' and redis.call('HGET', KEYS[1], 'connection') ~= ARGV[2] then
  return {0, version}
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[5])
redis.call('SREM', KEYS[3], ARGV[1])
version = redis.call('INCR', KEYS[4])
return {1, version}
