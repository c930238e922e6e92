-- reserve_slot: takes one of a node's job slots for one job attempt. The authoritative capacity check.
-- KEYS[1] node hash      KEYS[2] node lease      KEYS[3] node slots (set of job attempts)
-- ARGV[1] the job attempt, as 'job_id#attempt'
-- Returns 1 reserved; 2 this attempt already holds a slot (idempotent); 0 the node is full;
-- -1 the node is draining; -2 the node is gone (not registered or lease lapsed).
if redis.call('EXISTS', KEYS[2]) == 0 or redis.call('EXISTS', KEYS[1]) == 0 then
  return -2
end
if redis.call('SISMEMBER', KEYS[3], ARGV[1]) == 1 then
  return 2
end
local node = redis.call('HMGET', KEYS[1], 'state', 'reserved', 'max_concurrency')
if node[1] ~= 'up' then
  return -1
end
if tonumber(node[2]) >= tonumber(node[3]) then
  return 0
end
redis.call('SADD', KEYS[3], ARGV[1])
redis.call('HINCRBY', KEYS[1], 'reserved', 1)
return 1
