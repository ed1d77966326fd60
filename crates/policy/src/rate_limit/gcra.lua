-- GCRA step for kakuremichi's shared rate limits.
-- KEYS[1]: the limiter key. ARGV[1]: emission interval in microseconds. ARGV[2]: burst.
-- The clock is the server's, so that every gateway sharing the store agrees on "now".
-- Returns {allowed (1 or 0), TAT - now after the decision (us), wait before a retry (us)}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local window = interval * tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now) or now
if tat < now then
  tat = now
end
local new_tat = tat + interval
if new_tat - now > window then
  return {0, tat - now, new_tat - now - window}
end
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.floor((new_tat - now) / 1000) + 1000)
return {1, new_tat - now, 0}
