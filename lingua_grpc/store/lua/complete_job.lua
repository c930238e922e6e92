-- complete_job: records a job's result, if and only if it is about the job's current attempt and the job is
-- in one of the allowed states (the first result wins; a zombie's late one is refused). The result's
-- synthesized speech is kept apart, for a shorter time, for a client that resumes the session.
-- KEYS[1] job hash   KEYS[2] the session's set of non-final job indexes   KEYS[3] session hash
-- KEYS[4] the result's TTS audio
-- ARGV[1] attempt the result is about   ARGV[2] allowed current states, space separated
-- ARGV[3] TTS audio ('' for none)       ARGV[4] how long the TTS audio is kept, in ms
-- ARGV[5...] field, value pairs of the result
-- Returns {1 when recorded else 0, the instance owning the session now ('' when not recorded)}: the one to
-- deliver the result.
local cur = redis.call('HMGET', KEYS[1], 'state', 'attempt')
local owner = redis.call('HGET', KEYS[3], 'owner') or ''
if not cur[1] or tonumber(cur[2]) ~= tonumber(ARGV[1]) then
  return {0, owner}
end
if not string.find(' ' .. ARGV[2] .. ' ', ' ' .. cur[1] .. ' ', 1, true) then
  return {0, owner}
end
local t = redis.call('TIME')
redis.call('HSET', KEYS[1], 'state', 'COMPLETED', 'updated_ms', t[1] * 1000 + math.floor(t[2] / 1000))
for i = 5, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
redis.call('SREM', KEYS[2], redis.call('HGET', KEYS[1], 'utterance_index'))
if ARGV[3] ~= '' then
  redis.call('SET', KEYS[4], ARGV[3], 'PX', ARGV[4])
end
return {1, owner}
