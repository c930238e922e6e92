-- start_job: records the job of one utterance if it is new (idempotent per job key) and, when a node is
-- given, starts the job's next attempt there, fenced by the attempt the caller saw. One step, so a job is
-- never created twice and never assigned twice for the same attempt.
-- Fenced by the session's ownership too: once a client resumed the session on another instance, the
-- instance that owned it before starts nothing more for it.
-- KEYS[1] job hash       KEYS[2] job audio      KEYS[3] the session's set of non-final job indexes
-- KEYS[4] session hash (absent for a session that was never recorded, or whose record Redis lost)
-- ARGV[1] job id (session_id:utterance_index)     ARGV[2] session id      ARGV[3] utterance index
-- ARGV[4] source language   ARGV[5] target language   ARGV[6] sample rate (Hz)   ARGV[7] TTS wanted (1/0)
-- ARGV[8] audio (PCM bytes)  ARGV[9] job TTL in ms   ARGV[10] audio TTL in ms
-- ARGV[11] the job's current attempt as the caller knows it (ignored when the job is new)
-- ARGV[12] node id, or '' to only record the job (it waits for a slot)
-- ARGV[13] id of the scheduler instance that owns the job's session (recorded with a new job)
-- ARGV[14] position in the session's audio where the utterance ends (samples)   ARGV[15] answers the
-- owner has sent so far   ARGV[16] the utterance's duration in ms   (these three recorded with a new job)
-- Returns {1 when created else 0, new attempt}; the attempt is 0 when no node was given, -1 when the
-- attempt moved on (another assignment won), -2 when the job is already final, -3 when the session is
-- owned by another instance now (nothing changed). Running the same start
-- again (same attempt seen, same node) returns the same attempt, so a retried call is not mistaken for a
-- lost race.
local t = redis.call('TIME')
local now_ms = t[1] * 1000 + math.floor(t[2] / 1000)
local created = 0
local expected = tonumber(ARGV[11])
local session = redis.call('HMGET', KEYS[4], 'owner', 'next_index', 'audio_offset', 'sent')
if session[1] and session[1] ~= ARGV[13] then
  return {0, -3}
end
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1],
    'job_id', ARGV[1], 'session_id', ARGV[2], 'utterance_index', ARGV[3],
    'source_language', ARGV[4], 'target_language', ARGV[5], 'sample_rate_hz', ARGV[6], 'tts', ARGV[7],
    'state', 'CREATED', 'attempt', 0, 'created_ms', now_ms, 'owner', ARGV[13], 'duration_ms', ARGV[16])
  redis.call('PEXPIRE', KEYS[1], ARGV[9])
  redis.call('SADD', KEYS[3], ARGV[3])
  redis.call('PEXPIRE', KEYS[3], ARGV[9])
  redis.call('SET', KEYS[2], ARGV[8], 'PX', ARGV[10])
  if session[1] then
    redis.call('HSET', KEYS[4],
      'next_index', math.max(tonumber(session[2]), tonumber(ARGV[3]) + 1),
      'audio_offset', math.max(tonumber(session[3]), tonumber(ARGV[14])),
      'sent', math.max(tonumber(session[4]), tonumber(ARGV[15])), 'updated_ms', now_ms)
    redis.call('PEXPIRE', KEYS[4], ARGV[9])
  end
  created = 1
  expected = 0
end
if ARGV[12] == '' then
  return {created, 0}
end
local cur = redis.call('HMGET', KEYS[1], 'state', 'attempt')
if cur[1] == 'COMPLETED' or cur[1] == 'FAILED' or cur[1] == 'SKIPPED' then
  return {created, -2}
end
if tonumber(cur[2]) == expected + 1 and cur[1] == 'ASSIGNED'
    and redis.call('HGET', KEYS[1], 'node_id') == ARGV[12] then
  return {created, expected + 1}  -- this very start, run again (a retry after a lost reply): idempotent
end
if tonumber(cur[2]) ~= expected then
  return {created, -1}
end
local attempt = expected + 1
redis.call('HSET', KEYS[1], 'state', 'ASSIGNED', 'attempt', attempt, 'node_id', ARGV[12], 'assigned_ms', now_ms)
return {created, attempt}
