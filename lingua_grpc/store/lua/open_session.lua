-- open_session: records a new session, owned by the instance that holds its client stream, so any instance
-- can carry it on when its client resumes there (see claim_session).
-- KEYS[1] session hash
-- ARGV[1] session id   ARGV[2] source language   ARGV[3] target language   ARGV[4] sample rate (Hz)
-- ARGV[5] effective options (JSON)   ARGV[6] credential that opened it   ARGV[7] client name
-- ARGV[8] owning instance id   ARGV[9] how long the record stays without progress, in ms
-- ARGV[10] epoch of its ownership   ARGV[11] next utterance index   ARGV[12] audio recorded up to (samples)
-- ARGV[13] answers sent: where the session stands (1, 0, 0, 0 for a new one; a live session's own figures
-- when its owner records it again after Redis lost its data)
-- Returns 1 when recorded; 0 when a session of that id exists already (nothing changed).
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
local t = redis.call('TIME')
local now_ms = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('HSET', KEYS[1],
  'session_id', ARGV[1], 'source_language', ARGV[2], 'target_language', ARGV[3], 'sample_rate_hz', ARGV[4],
  'options', ARGV[5], 'credential', ARGV[6], 'client_name', ARGV[7], 'owner', ARGV[8], 'epoch', ARGV[10],
  'next_index', ARGV[11], 'audio_offset', ARGV[12], 'sent', ARGV[13], 'ended', 0, 'created_ms', now_ms,
  'updated_ms', now_ms)
redis.call('PEXPIRE', KEYS[1], ARGV[9])
return 1
