"""The Lua scripts of the Redis bus (loaded with SCRIPT LOAD, run with EVALSHA).

Each runs atomically in Redis; the key layout is described in
:mod:`rtserver.bus.redis_bus`.
"""

from __future__ import annotations

__all__ = [
    "PRESENCE_ADD_LUA",
    "PRESENCE_QUERY_LUA",
    "PUBLISH_LUA",
    "RECOVER_LUA",
    "RESEED_LUA",
    "SCRIPTS",
    "TOUCH_ROOMS_LUA",
]

#: KEYS: seq, hist, room epoch, dataset epoch, history bytes, publish key.
#: ARGV: channel, origin, body, history_size, dataset epoch, new room epoch,
#: history_ttl ms, history_max_bytes, deadline ms (Redis clock, 0 = none),
#: idempotency window ms, publish key ('' = none).
#: Returns {seq, room epoch, evicted under byte pressure, 0} or, for a key
#: already applied, {seq, room epoch, 0, 1}; errors EPOCH / EXPIRED apply nothing.
PUBLISH_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[11] ~= '' then
  local seen = redis.call('GET', KEYS[6])
  if seen then
    local sp = string.find(seen, ' ', 1, true)
    return {tonumber(string.sub(seen, sp + 1)), string.sub(seen, 1, sp - 1), 0, 1}
  end
end
local deadline = tonumber(ARGV[9])
if deadline > 0 and now > deadline then
  return redis.error_reply('EXPIRED publish reached Redis after its deadline')
end
local dataset = redis.call('GET', KEYS[4])
if dataset ~= ARGV[5] then
  return redis.error_reply('EPOCH redis epoch is ' .. tostring(dataset))
end
local ttl = tonumber(ARGV[7])
local epoch = redis.call('GET', KEYS[3])
if not epoch then
  epoch = ARGV[6]
  redis.call('SET', KEYS[3], epoch)
end
local seq = redis.call('INCR', KEYS[1])
local body = ARGV[3]
local msg = 'P' .. string.format('%d', seq) .. '\\n' .. epoch .. '\\n' .. ARGV[2] .. '\\n' .. body
local size = tonumber(ARGV[4])
local evicted = 0
if size > 0 then
  redis.call('LPUSH', KEYS[2], string.format('%d', now) .. '\\n' .. #body .. '\\n' .. msg)
  local bytes = redis.call('INCRBY', KEYS[5], #body)
  local limit = tonumber(ARGV[8])
  local len = redis.call('LLEN', KEYS[2])
  while len > 0 and (len > size or bytes > limit) do
    local old = redis.call('RPOP', KEYS[2])
    local a = string.find(old, '\\n', 1, true)
    local b = string.find(old, '\\n', a + 1, true)
    bytes = redis.call('DECRBY', KEYS[5], tonumber(string.sub(old, a + 1, b - 1)))
    if len <= size then
      evicted = evicted + 1
    end
    len = len - 1
  end
  redis.call('PEXPIRE', KEYS[2], ttl)
  redis.call('PEXPIRE', KEYS[5], ttl)
end
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[3], ttl)
if ARGV[11] ~= '' then
  redis.call('SET', KEYS[6], epoch .. ' ' .. string.format('%d', seq), 'PX', ARGV[10])
end
redis.call('PUBLISH', ARGV[1], msg)
return {seq, epoch, evicted, 0}
"""

#: KEYS: seq, room epoch, hist. ARGV: since epoch ('' = position only), since seq,
#: new room epoch, history_ttl ms. Creates the room's epoch when it has none.
#: Returns {epoch, seq, reason or '', entries newest first (younger than the ttl)}.
RECOVER_LUA = """
local ttl = tonumber(ARGV[4])
local epoch = redis.call('GET', KEYS[2])
if not epoch then
  epoch = ARGV[3]
  redis.call('SET', KEYS[2], epoch, 'PX', ttl)
end
local seq = tonumber(redis.call('GET', KEYS[1]) or '0')
if ARGV[1] == '' then
  return {epoch, seq, '', {}}
end
if ARGV[1] ~= epoch then
  return {epoch, seq, 'epoch_changed', {}}
end
local since = tonumber(ARGV[2])
if since > seq or since < 0 then
  return {epoch, seq, 'invalid_position', {}}
end
if since == seq then
  return {epoch, seq, '', {}}
end
local t = redis.call('TIME')
local horizon = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - ttl
local entries = redis.call('LRANGE', KEYS[3], 0, seq - since - 1)
local fresh = {}
for i = 1, #entries do
  local e = entries[i]
  if tonumber(string.sub(e, 1, string.find(e, '\\n', 1, true) - 1)) <= horizon then
    break
  end
  fresh[#fresh + 1] = e
end
return {epoch, seq, '', fresh}
"""

#: KEYS: the seq, epoch, hist and history-bytes keys of rooms with interest.
#: ARGV: history_ttl ms. Keeps the streams of watched rooms from expiring.
TOUCH_ROOMS_LUA = """
for i = 1, #KEYS do
  redis.call('PEXPIRE', KEYS[i], ARGV[1])
end
return #KEYS
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
if redis.call('EXISTS', KEYS[2]) == 1 then return -1 end
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
                           "presence_query": PRESENCE_QUERY_LUA, "reseed": RESEED_LUA,
                           "recover": RECOVER_LUA, "touch_rooms": TOUCH_ROOMS_LUA}
