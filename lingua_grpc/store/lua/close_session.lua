-- close_session: the owner's stream of a session ended. It records how many answers were sent and whether
-- the session is over for good (ended: it can no longer be resumed) or waits for its client to resume.
-- Fenced by ownership: an instance that lost the session to a resume elsewhere changes nothing.
-- KEYS[1] session hash
-- ARGV[1] owning instance id   ARGV[2] epoch it owns   ARGV[3] answers sent   ARGV[4] 1: ended for good
-- ARGV[5] how long the record stays now, in ms
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
end
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
