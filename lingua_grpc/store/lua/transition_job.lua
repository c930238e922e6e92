-- transition_job: moves a job to a new state if, and only if, the message is about its current attempt
-- and the job is in one of the allowed states. The first result wins; a late message of an older attempt
-- (a zombie node) is refused. A final state ends the job: it leaves the session's set of non-final jobs, and
-- its utterance's audio goes (no attempt will run again).
-- KEYS[1] job hash       KEYS[2] the session's set of non-final job indexes   KEYS[3] the utterance's audio
-- ARGV[1] attempt the message is about   ARGV[2] allowed current states, space separated
-- ARGV[3] new state                      ARGV[4...] field, value pairs to record with the change
-- Returns 1 when applied; 0 when refused (other attempt, or not in an allowed state, or no such job).
local cur = redis.call('HMGET', KEYS[1], 'state', 'attempt')
if not cur[1] or tonumber(cur[2]) ~= tonumber(ARGV[1]) then
  return 0
end
if not string.find(' ' .. ARGV[2] .. ' ', ' ' .. cur[1] .. ' ', 1, true) then
  return 0
end
local t = redis.call('TIME')
redis.call('HSET', KEYS[1], 'state', ARGV[3], 'updated_ms', t[1] * 1000 + math.floor(t[2] / 1000))
for i = 4, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
if ARGV[3] == 'COMPLETED' or ARGV[3] == 'FAILED' or ARGV[3] == 'SKIPPED' then
  redis.call('SREM', KEYS[2], redis.call('HGET', KEYS[1], 'utterance_index'))
  redis.call('DEL', KEYS[3])
end
return 1
