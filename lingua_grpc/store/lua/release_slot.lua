-- release_slot: gives back the slot a job attempt holds. Idempotent: releasing twice frees one slot.
-- KEYS[1] node hash      KEYS[2] node slots (set of job attempts)
-- ARGV[1] the job attempt, as 'job_id#attempt'
-- Returns 1 when a slot was freed, 0 when this attempt held none.
if redis.call('SREM', KEYS[2], ARGV[1]) == 0 then
  return 0
end
if redis.call('EXISTS', KEYS[1]) == 1 and tonumber(redis.call('HGET', KEYS[1], 'reserved')) > 0 then
  redis.call('HINCRBY', KEYS[1], 'reserved', -1)
end
return 1
