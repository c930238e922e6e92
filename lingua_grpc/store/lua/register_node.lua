-- register_node: adds a node to the registry, or refreshes its registration (a reconnect).
-- KEYS[1] node hash      KEYS[2] node lease      KEYS[3] node index (set)      KEYS[4] registry version
-- KEYS[5] node slots (set of job attempts holding a slot)
-- KEYS[6] registry epoch: set here when missing (an empty registry: new, or Redis lost its data), so that
--         instances comparing versions see that versions started again
-- ARGV[1] node id        ARGV[2] capabilities, canonical JSON                  ARGV[3] max concurrency
-- ARGV[4] scheduler instance id holding the stream                             ARGV[5] connection id
-- ARGV[6] lease in ms      ARGV[7] name of the credential registering ('anonymous' without credentials)
-- ARGV[8...] the job attempts the node says it holds, as 'job_id#attempt': the slot set becomes exactly these
--            (a scheduler killed with jobs running leaves their slots held; the node knows what it runs)
-- Returns {registry version, 1 when the version was bumped (new node, new capabilities, was draining, held by
--          another instance now: every instance must hand its attempts to the new holder) else 0,
--          or -1 when a live registration of the node id is held under another credential (nothing changed),
--          the slot members ('job_id#attempt') freed because the node does not run those attempts}.
-- The newest connection of the same credential wins: heartbeats and deregistration of an older connection
-- are refused afterwards.
local t = redis.call('TIME')
local now_ms = t[1] * 1000 + math.floor(t[2] / 1000)
if redis.call('EXISTS', KEYS[6]) == 0 then
  redis.call('SET', KEYS[6], t[1] .. '.' .. t[2] .. '/' .. ARGV[5])
end
local changed = 1
if redis.call('EXISTS', KEYS[1]) == 1 then
  local cur = redis.call('HMGET', KEYS[1], 'capabilities', 'max_concurrency', 'state', 'credential', 'instance')
  if cur[4] and cur[4] ~= ARGV[7] and redis.call('EXISTS', KEYS[2]) == 1 then
    return {tonumber(redis.call('GET', KEYS[4]) or '0'), -1, {}}
  end
  if cur[1] == ARGV[2] and cur[2] == ARGV[3] and cur[3] == 'up' and cur[5] == ARGV[4] then
    changed = 0
  end
else
  redis.call('HSET', KEYS[1], 'registered_ms', now_ms, 'reserved', 0, 'load', '{}')
end
redis.call('HSET', KEYS[1],
  'node_id', ARGV[1], 'capabilities', ARGV[2], 'max_concurrency', ARGV[3], 'state', 'up',
  'instance', ARGV[4], 'connection', ARGV[5], 'last_heartbeat_ms', now_ms, 'credential', ARGV[7])
redis.call('SET', KEYS[2], ARGV[5], 'PX', ARGV[6])
local before = redis.call('SMEMBERS', KEYS[5])
redis.call('DEL', KEYS[5])
for i = 8, #ARGV do
  redis.call('SADD', KEYS[5], ARGV[i])
end
local freed = {}
for _, member in ipairs(before) do
  if redis.call('SISMEMBER', KEYS[5], member) == 0 then
    freed[#freed + 1] = member
  end
end
redis.call('HSET', KEYS[1], 'reserved', redis.call('SCARD', KEYS[5]))
redis.call('SADD', KEYS[3], ARGV[1])
local version
if changed == 1 then
  version = redis.call('INCR', KEYS[4])
else
  version = tonumber(redis.call('GET', KEYS[4]) or '0')
end
return {version, changed, freed}
