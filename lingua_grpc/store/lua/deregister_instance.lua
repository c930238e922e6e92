-- deregister_instance: removes a scheduler instance that stops cleanly. Idempotent.
-- KEYS[1] instance hash     KEYS[2] instance lease     KEYS[3] instance index (set)
-- ARGV[1] instance id
-- Returns 1 when removed, 0 when it was not recorded.
local existed = redis.call('DEL', KEYS[1])
redis.call('DEL', KEYS[2])
redis.call('SREM', KEYS[3], ARGV[1])
return existed
