"""The Lua scripts of the Redis bus (loaded with SCRIPT LOAD, run with EVALSHA).

Each runs atomically in Redis; the key layout is described in
:mod:`rtserver.bus.redis_bus`.
"""

from __future__ import annotations

__all__ = ["PRESENCE_ADD_LUA", "PRESENCE_QUERY_LUA", "PUBLISH_LUA", "RESEED_LUA", "SCRIPTS"]

PUBLISH_LUA = """
local epoch = redis.call('GET', KEYS[3])
if epoch ~= ARGV[5] then
  return redis.error_reply('EPOCH redis epoch is ' .. tostring(epoch))
end
local seq = redis.call('INCR', KEYS[1])
local msg = 'P' .. string.format('%d', seq) .. '\\n' .. ARGV[2] .. '\\n' .. ARGV[3]
local size = tonumber(ARGV[4])
if size > 0 then
  redis.call('LPUSH', KEYS[2], msg)
  redis.call('LTRIM', KEYS[2], 0, size - 1)
end
redis.call('PUBLISH', ARGV[1], msg)
return seq
"""

PRESENCE_ADD_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], ttl)
return #ARGV - 1
"""

PRESENCE_QUERY_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local count = redis.call('ZCARD', KEYS[1])
local limit = tonumber(ARGV[1])
local members = {}
if limit > 0 then
  members = redis.call('ZRANGE', KEYS[1], 0, limit - 1)
end
return {count, members}
"""

RESEED_LUA = """
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
local known = tonumber(ARGV[1])
if cur < known then
  redis.call('SET', KEYS[1], ARGV[1])
  return known
end
return cur
"""

#: name -> script text, in load order.
SCRIPTS: dict[str, str] = {"publish": PUBLISH_LUA, "presence_add": PRESENCE_ADD_LUA,
                           "presence_query": PRESENCE_QUERY_LUA, "reseed": RESEED_LUA}
