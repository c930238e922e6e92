-- drain_node: marks a node draining, so no new jobs are reserved on it. Idempotent.
-- KEYS[1] node hash      KEYS[2] registry version
-- ARGV: none
-- Returns {status, registry version}: status 1 now draining, 2 was already draining, 0 unknown node.
local version = tonumber(redis.call('GET', KEYS[2]) or '0')
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {0, version}
end
if redis.call('HGET', KEYS[1], 'state') == 'draining' then
  return {2, version}
end
redis.call('HSET', KEYS[1], 'state', 'draining')
version = redis.call('INCR', KEYS[2])
return {1, version}
