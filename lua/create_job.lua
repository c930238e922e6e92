-- create_job: creates the job of one utterance, or returns the one that exists (idempotent per job key).
-- KEYS[1] job hash       KEYS[2] job audio
-- ARGV[1] job id (session_id:utterance_index)     ARGV[2] session id      ARGV[3] utterance index
-- ARGV[4] source language   ARGV[5] target language   ARGV[6] sample rate (Hz)   ARGV[7] TTS wanted (1/0)
-- ARGV[8] audio (PCM bytes)  ARGV[9] job TTL in ms   ARGV[10] audio TTL in ms
-- Returns {1 when created else 0, state, attempt}.
if redis.call('EXISTS', KEYS[1]) == 1 then
  local cur = redis.call('HMGET', KEYS[1], 'state', 'attempt')
  return {0, cur[1], tonumber(cur[2])}
end
local t = redis.call('TIME')
redis.call('HSET', KEYS[1],
  'job_id', ARGV[1], 'session_id', ARGV[2], 'utterance_index', ARGV[3],
  'source_language', ARGV[4], 'target_language', ARGV[5], 'sample_rate_hz', ARGV[6], 'tts', ARGV[7],
  'state', 'CREATED', 'attempt', 0, 'created_ms', t[1] * 1000 + math.floor(t[2] / 1000))
redis.call('PEXPIRE', KEYS[1], ARGV[9])
redis.call('SET', KEYS[2], ARGV[8], 'PX', ARGV[10])
return {1, 'CREATED', 0}
