-- handoff: puts one message in another scheduler instance's inbox (a Redis Stream), only while that
-- instance is alive: once its lease lapsed (and a survivor may be recovering what it left), nothing more
-- lands there and the sender handles the message itself.
-- KEYS[1] the target instance's inbox lease     KEYS[2] its inbox (stream)
-- ARGV[1] most entries the inbox may hold (a bound: a stalled instance cannot grow it without end)
-- ARGV[2...] field, value pairs of the message
-- Returns the entry id; 0 when the target is gone; -1 when its inbox is full.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
if redis.call('XLEN', KEYS[2]) >= tonumber(ARGV[1]) then
  return -1
end
local fields = {}
for i = 2, #ARGV do
  fields[#fields + 1] = ARGV[i]
end
return redis.call('XADD', KEYS[2], '*', unpack(fields))
