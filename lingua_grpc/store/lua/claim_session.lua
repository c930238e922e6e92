-- claim_session: a client resumed its session on a stream of this instance, which takes the session over at
-- once: it becomes the owner (a new epoch). The previous owner, if still alive, learns it and ends its
-- stream; anything it tries to record for the session afterwards is refused (start_job, close_session).
-- KEYS[1] session hash
-- ARGV[1] id of the claiming instance   ARGV[2] credential of the resuming client
-- ARGV[3] how long the record stays without progress, in ms
-- Returns {1, previous owner, then the session's fields as name, value pairs} when claimed;
-- {0} when no such session is recorded; {-1} when it ended; {-2, credential} when another credential
-- opened it (nothing changed in those cases).
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {0}
end
local s = redis.call('HMGET', KEYS[1], 'ended', 'credential', 'owner')
if s[1] == '1' then
  return {-1}
end
if s[2] ~= ARGV[2] then
  return {-2, s[2]}
end
local t = redis.call('TIME')
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'updated_ms', t[1] * 1000 + math.floor(t[2] / 1000))
redis.call('HINCRBY', KEYS[1], 'epoch', 1)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
local out = {1, s[3]}
for _, v in ipairs(redis.call('HGETALL', KEYS[1])) do
  out[#out + 1] = v
end
return out
