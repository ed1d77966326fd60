-- Fixed-window quota for kakuremichi's API key plans.
-- KEYS[1]: the counter of the current window. ARGV[1]: the quota.
-- ARGV[2]: milliseconds until the window ends (the counter expires then).
-- Returns {allowed (1 or 0), requests counted in the window}.
local used = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if used >= tonumber(ARGV[1]) then
  return {0, used}
end
used = redis.call('INCR', KEYS[1])
if used == 1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return {1, used}
