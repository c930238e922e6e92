-- claim_instance: one survivor claims a dead scheduler instance, to take over what it left (its inbox, its
-- sessions' jobs). Exactly one claim succeeds, and only once the instance's inbox lease has lapsed; the
-- marker stays (a dead instance that wakes up finds it and stops: see renew_inbox).
-- KEYS[1] the dead instance's inbox lease     KEYS[2] its claim marker
-- ARGV[1] id of the claiming instance          ARGV[2] how long the marker stays, in ms
-- Returns 1 when claimed now; 0 when the instance is alive; -1 when another survivor claimed it.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
if not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return -1
end
return 1
