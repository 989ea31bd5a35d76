-- Telegraphy: publish one event on Redis, keeping history and retention in
-- the same atomic step, so history order and live order cannot disagree.
-- Every publisher (gateway nodes, telegraphy-publish, the Rust and Python
-- publishers) publishes through this script. A copy ships with the Python
-- package; a test keeps the two identical.
--
-- KEYS[1] history settings (hash: topics, size, ttl_ms), written by gateways
--         (on a Redis Cluster only declared: ARGV[6..8] carry them)
-- KEYS[2] the topic's stream of kept events
-- KEYS[3] the topic's log meta (hash: epoch, head)
-- KEYS[4] the topic's retained events (list, newest first)
-- KEYS[5] the live channel (on a Redis Cluster, the topic's shard channel)
-- ARGV[1] the envelope (msgpack array of 9, or of 11 ending in nil)
-- ARGV[2] the topic
-- ARGV[3] "1" to retain the event
-- ARGV[4] "1" when the event may be kept (no session-id audience)
-- ARGV[5] an epoch (1..65535) for a log that starts now
-- ARGV[6..9] on a Redis Cluster only, where a script reaches one slot: the
--         history settings (topics, size, ttl_ms) as the publisher read
--         them, and the classic channel to PUBLISH on as well when a node
--         subscribed by pattern matches the topic ('' when none does)
-- Returns {receivers, epoch, offset}; epoch and offset are 0 when the topic
-- keeps no history.

local function matches(pattern, topic)
  if pattern == '*' then
    return true
  end
  if string.sub(pattern, -1) == '*' then
    local prefix = string.sub(pattern, 1, -2)
    return string.sub(topic, 1, #prefix) == prefix
  end
  if string.find(pattern, '..', 1, true) == nil and string.sub(pattern, 1, 1) ~= '.' and string.sub(pattern, -1) ~= '.' then
    return pattern == topic
  end
  -- Wildcard: as many components, equal in every non-empty one.
  local p, t = {}, {}
  for c in string.gmatch(pattern .. '.', '([^.]*)%.') do p[#p + 1] = c end
  for c in string.gmatch(topic .. '.', '([^.]*)%.') do t[#t + 1] = c end
  if #p ~= #t then
    return false
  end
  for i = 1, #p do
    if p[i] ~= '' and p[i] ~= t[i] then
      return false
    end
  end
  return true
end

-- Whether two values unpacked from msgpack are equal (maps by content).
local function same(a, b)
  if type(a) ~= 'table' or type(b) ~= 'table' then
    return a == b
  end
  for k, v in pairs(a) do
    if not same(v, b[k]) then
      return false
    end
  end
  for k in pairs(b) do
    if a[k] == nil then
      return false
    end
  end
  return true
end

local payload = ARGV[1]
local keepable = ARGV[4] == '1'
local cluster = ARGV[6] ~= nil
local epoch, offset = 0, 0

if keepable then
  local settings
  if cluster then
    settings = { ARGV[6] ~= '' and ARGV[6], ARGV[7], ARGV[8] }
  else
    settings = redis.call('HMGET', KEYS[1], 'topics', 'size', 'ttl_ms')
  end
  local history = false
  if settings[1] then
    for pattern in string.gmatch(settings[1], '[^\n]+') do
      if matches(pattern, ARGV[2]) then
        history = true
        break
      end
    end
  end
  if history then
    local size = tonumber(settings[2]) or 1000
    local ttl = tonumber(settings[3]) or 300000
    if redis.call('EXISTS', KEYS[3]) == 0 then
      redis.call('HSET', KEYS[3], 'epoch', ARGV[5], 'head', 0)
      redis.call('DEL', KEYS[2])
    end
    epoch = tonumber(redis.call('HGET', KEYS[3], 'epoch'))
    offset = redis.call('HINCRBY', KEYS[3], 'head', 1)
    local position = cmsgpack.pack({ epoch, offset })
    local first = string.byte(payload, 1)
    if first == 0x99 then
      -- 1.0 envelope: becomes 1.1 with empty options and the position.
      payload = string.char(0x9B) .. string.sub(payload, 2) .. string.char(0x80) .. position
    else
      -- 1.1 envelope: its last field, the position, is nil.
      payload = string.sub(payload, 1, -2) .. position
    end
    redis.call('XADD', KEYS[2], 'MAXLEN', size, '0-' .. offset, 'e', payload)
    redis.call('PEXPIRE', KEYS[2], ttl)
    redis.call('PEXPIRE', KEYS[3], ttl)
  end
  if ARGV[3] == '1' then
    -- One retained event per audience (the envelope's 8th field, its
    -- filter): the new one replaces an older one for the same audience.
    local filter = cmsgpack.unpack(payload)[8]
    for _, old in ipairs(redis.call('LRANGE', KEYS[4], 0, -1)) do
      if same(cmsgpack.unpack(old)[8], filter) then
        redis.call('LREM', KEYS[4], 1, old)
      end
    end
    redis.call('LPUSH', KEYS[4], payload)
    redis.call('LTRIM', KEYS[4], 0, 3)
  end
end

local receivers
if cluster then
  receivers = redis.call('SPUBLISH', KEYS[5], payload)
  if ARGV[9] ~= '' then
    receivers = receivers + redis.call('PUBLISH', ARGV[9], payload)
  end
else
  receivers = redis.call('PUBLISH', KEYS[5], payload)
end
return { receivers, epoch, offset }
