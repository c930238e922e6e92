-- heartbeat_node: renews a node's lease and records its load.
-- KEYS[1] node hash      KEYS[2] node lease
-- ARGV[1] connection id  ARGV[2] load, JSON     ARGV[3] lease in ms
-- Returns 1 when renewed; 0 when the node is not registered or its lease already lapsed (register again);
-- -1 when the node registered again on a newer connection (this one is stale and must close).
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('EXISTS', KEYS[2]) == 0 then
  return 0
end
if redis.call('HGET', KEYS[1], 'connection') ~= ARGV[1] then
  return -1
end
local t = redis.call('TIME')
redis.call('HSET', KEYS[1], 'load', ARGV[2], 'last_heartbeat_ms', t[1] * 1000 + math.floor(t[2] / 1000))
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[3])
return 1
