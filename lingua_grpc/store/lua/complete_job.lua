-- complete_job: records a job's result, if and only if it is about the job's current attempt and the job is
-- in one of the allowed states (the first result wins; a zombie's late one is refused). The utterance's audio
-- goes at once: no attempt needs it once a result is recorded. The result's synthesized speech is kept apart,
-- for a shorter time, for a client that resumes the session (not when the session ended for good: nobody
-- can resume it), and its index goes in the session's index of kept speech, so the session's end finds it.
-- KEYS[1] job hash   KEYS[2] the session's set of non-final job indexes   KEYS[3] session hash
-- KEYS[4] the result's TTS audio   KEYS[5] the utterance's audio
-- KEYS[6] the session's index of kept TTS audio (sorted set: utterance index scored by when it expires)
-- ARGV[1] attempt the result is about   ARGV[2] allowed current states, space separated
-- ARGV[3] TTS audio ('' for none)       ARGV[4] how long the TTS audio is kept, in ms
-- ARGV[5...] field, value pairs of the result
-- Returns {1 when recorded else 0, the instance owning the session now ('' when not recorded)}: the one to
-- deliver the result.
local cur = redis.call('HMGET', KEYS[1], 'state', 'attempt')
local session = redis.call('HMGET', KEYS[3], 'owner', 'ended')
local owner = session[1] or ''
if not cur[1] or tonumber(cur[2]) ~= tonumber(ARGV[1]) then
  return {0, owner}
end
if not string.find(' ' .. ARGV[2] .. ' ', ' ' .. cur[1] .. ' ', 1, true) then
  return {0, owner}
end
local t = redis.call('TIME')
local now_ms = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('HSET', KEYS[1], 'state', 'COMPLETED', 'updated_ms', now_ms)
for i = 5, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
local index = redis.call('HGET', KEYS[1], 'utterance_index')
redis.call('SREM', KEYS[2], index)
redis.call('DEL', KEYS[5])
if ARGV[3] ~= '' and session[2] ~= '1' then
  redis.call('SET', KEYS[4], ARGV[3], 'PX', ARGV[4])
  redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', now_ms)
  redis.call('ZADD', KEYS[6], now_ms + tonumber(ARGV[4]), index)
  redis.call('PEXPIRE', KEYS[6], ARGV[4])
end
return {1, owner}
