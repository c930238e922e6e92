-- close_session: the owner's stream of a session ended. It records how many answers were sent and whether
-- the session is over for good (ended: it can no longer be resumed) or waits for its client to resume.
-- A session over for good keeps no speech: the audio of its jobs not yet final (they are being ended) and the
-- synthesized speech of its results go now. Its record and its jobs' records stay (states, timings and
-- texts, for operators' GetSession and GetJob, and to refuse a resume as ended) until their TTLs.
-- Fenced by ownership: an instance that lost the session to a resume elsewhere changes nothing.
-- The audio and TTS keys are the given prefixes followed by an utterance index: they share the session's
-- hash tag, so the script still touches one hash slot.
-- KEYS[1] session hash   KEYS[2] the session's set of non-final job indexes
-- KEYS[3] the session's index of kept TTS audio (sorted set of utterance indexes)
-- ARGV[1] owning instance id   ARGV[2] epoch it owns   ARGV[3] answers sent   ARGV[4] 1: ended for good
-- ARGV[5] how long the record stays now, in ms
-- ARGV[6] prefix of the session's job audio keys   ARGV[7] prefix of the session's TTS audio keys
-- Returns 1 when recorded; 0 when the session is another owner's now, or gone.
local s = redis.call('HMGET', KEYS[1], 'owner', 'epoch', 'sent')
if s[1] ~= ARGV[1] or s[2] ~= ARGV[2] then
  return 0
end
local t = redis.call('TIME')
local sent = math.max(tonumber(s[3]) or 0, tonumber(ARGV[3]))
redis.call('HSET', KEYS[1], 'sent', sent, 'updated_ms', t[1] * 1000 + math.floor(t[2] / 1000))
if ARGV[4] == '1' then
  redis.call('HSET', KEYS[1], 'ended', 1)
  for _, index in ipairs(redis.call('SMEMBERS', KEYS[2])) do
    redis.call('DEL', ARGV[6] .. index)
  end
  for _, index in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do
    redis.call('DEL', ARGV[7] .. index)
  end
  redis.call('DEL', KEYS[3])
end
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
