-- heartbeat_instance: records a scheduler instance and renews its lease (its first call registers it).
-- KEYS[1] instance hash     KEYS[2] instance lease     KEYS[3] instance index (set)
-- ARGV[1] instance id       ARGV[2] advertised address ARGV[3] lease in ms    ARGV[4] started, ms since epoch
-- ARGV[5] node streams held ARGV[6] sessions open      ARGV[7] jobs running
-- ARGV[8] how long the record outlives its last renewal, in ms (a dead instance stays listed, not alive,
--         that long, then its record expires: a process killed -9 leaves nothing for good)
-- Returns 1 when the instance was not recorded (new, or its record was lost or taken over), else 0.
local t = redis.call('TIME')
local now_ms = t[1] * 1000 + math.floor(t[2] / 1000)
local new = 0
if redis.call('EXISTS', KEYS[1]) == 0 then
  new = 1
end
redis.call('HSET', KEYS[1], 'instance_id', ARGV[1], 'address', ARGV[2], 'started_ms', ARGV[4],
  'last_heartbeat_ms', now_ms, 'nodes', ARGV[5], 'sessions', ARGV[6], 'jobs', ARGV[7])
redis.call('PEXPIRE', KEYS[1], ARGV[8])
redis.call('SET', KEYS[2], '1', 'PX', ARGV[3])
redis.call('SADD', KEYS[3], ARGV[1])
return new
