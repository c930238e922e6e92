-- renew_inbox: renews a scheduler instance's inbox lease (other instances hand it work while it holds), and
-- keeps its inbox and session index from outliving it for good. Refused once a survivor claimed the
-- instance as dead: an instance that was only paused past its lease must not carry on as if it held.
-- KEYS[1] inbox lease     KEYS[2] claim marker     KEYS[3] inbox (stream)     KEYS[4] session index (set)
-- ARGV[1] lease in ms     ARGV[2] how long the inbox and index outlive the last renewal, in ms
-- ARGV[3] 1 for the first renewal of a process starting under this id (a new incarnation: a claim on its
--         predecessor is cleared; the survivor only removes what it took over), else 0
-- Returns 1 when renewed; 0 when a survivor claimed this instance (it must stop).
if ARGV[3] == '1' then
  redis.call('DEL', KEYS[2])
elseif redis.call('EXISTS', KEYS[2]) == 1 then
  return 0
end
redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
redis.call('PEXPIRE', KEYS[3], ARGV[2])
redis.call('PEXPIRE', KEYS[4], ARGV[2])
return 1
