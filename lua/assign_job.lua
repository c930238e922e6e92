-- assign_job: starts the next attempt of a job on a node, fenced by the attempt the caller saw.
-- KEYS[1] job hash
-- ARGV[1] the job's current attempt as the caller knows it      ARGV[2] node id
-- Returns the new attempt (current + 1); -1 when the attempt moved on (another assignment won);
-- -2 when the job is gone or already final (COMPLETED, FAILED, SKIPPED).
local cur = redis.call('HMGET', KEYS[1], 'state', 'attempt')
local state = cur[1]
if not state or state == 'COMPLETED' or state == 'FAILED' or state == 'SKIPPED' then
  return -2
end
if tonumber(cur[2]) ~= tonumber(ARGV[1]) then
  return -1
end
local t = redis.call('TIME')
local attempt = tonumber(ARGV[1]) + 1
redis.call('HSET', KEYS[1], 'state', 'ASSIGNED', 'attempt', attempt, 'node_id', ARGV[2],
  'assigned_ms', t[1] * 1000 + math.floor(t[2] / 1000))
return attempt
