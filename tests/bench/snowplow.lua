-- wrk script: realistic Snowplow tracker traffic with unique event ids and exact per-run counters.
--
-- usage: wrk -s snowplow.lua URL -- <workload> <runtag> <stop_after_seconds>
--   workload: get | post1 | post10 | mix
--   runtag:   8 hex digits; every event id of this run starts with it, so the runner can count
--             exactly this run's rows in the store (SELECT ... WHERE event_id LIKE 'runtag%').
--   stop_after_seconds: after this long each connection stops sending once its in-flight request is
--             answered (delay() returns a huge value). Run wrk with -d a little longer: then nothing is
--             in flight when wrk exits, and "events stored == events acknowledged" can be exact.
-- Devices: like browsers, 80% of requests come back with a device cookie (`sp=`) the collector set
-- earlier (kept from Set-Cookie answers in a small per-thread pool), 20% are first visits. In the
-- mix, 1 in 4 anonymous requests still carries an old cookie (a tracker that switched to anonymous
-- tracking), which the collector must ignore.
-- done() prints one line "BENCHJSON {...}" with counters, latency percentiles (us) and the rate over
-- the active window (first request to last response), which excludes the idle drain tail.

local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec_t;
int clock_gettime(int clk_id, bench_timespec_t *tp);
]]
local ts = ffi.new("bench_timespec_t")
local function clock(id)
  ffi.C.clock_gettime(id, ts)
  return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end
local function mono() return clock(1) end -- CLOCK_MONOTONIC: same clock in every wrk thread
local function epoch_ms() return string.format("%d", math.floor(clock(0) * 1000)) end

local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
-- base64url without padding, as the browser tracker sends cx / ue_px (init-time only, not hot)
local function b64url(s)
  local out, bit = {}, require("bit")
  for i = 1, #s, 3 do
    local a, b, c = s:byte(i, i + 2)
    local n = bit.bor(bit.lshift(a, 16), bit.lshift(b or 0, 8), c or 0)
    local chars = 2 + (b and 1 or 0) + (c and 1 or 0)
    for k = 1, chars do
      local idx = bit.band(bit.rshift(n, 18 - 6 * (k - 1)), 63)
      out[#out + 1] = B64:sub(idx + 1, idx + 1)
    end
  end
  return table.concat(out)
end

local function urlenc(s)
  return (s:gsub("[^%w%-%._~]", function(ch) return string.format("%%%02X", ch:byte()) end))
end

local PAYLOAD = "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4"
local CONTEXTS_HEAD = '{"schema":"iglu:com.snowplowanalytics.snowplow/contexts/jsonschema/1-0-0","data":['
  .. '{"schema":"iglu:com.snowplowanalytics.snowplow/web_page/jsonschema/1-0-0","data":{"id":"'
local CONTEXTS_TAIL = '"}},'
  .. '{"schema":"iglu:org.w3/PerformanceTiming/jsonschema/1-0-0","data":{"navigationStart":1732270000000,'
  .. '"fetchStart":1732270000003,"domainLookupStart":1732270000010,"connectEnd":1732270000042,'
  .. '"responseEnd":1732270000120,"domComplete":1732270000480,"loadEventEnd":1732270000490}}]}'
local CONTEXTS = CONTEXTS_HEAD .. "6c2f5e53-1e8b-4a7c-9d1b-2a1f2f3e4d5c" .. CONTEXTS_TAIL
local URL = "https://shop.example.com/products/42-blue-widget?utm_source=newsletter&utm_medium=email"
local REFR = "https://www.google.com/"
local UE_LINK = '{"schema":"iglu:com.snowplowanalytics.snowplow/unstruct_event/jsonschema/1-0-0",'
  .. '"data":{"schema":"iglu:com.snowplowanalytics.snowplow/link_click/jsonschema/1-0-1",'
  .. '"data":{"targetUrl":"https://shop.example.com/cart","elementId":"add-to-cart","elementClasses":["btn"]}}}'
local UE_ANON = '{"schema":"iglu:com.snowplowanalytics.snowplow/unstruct_event/jsonschema/1-0-0",'
  .. '"data":{"schema":"iglu:com.acme/anonymize/jsonschema/1-0-0","data":{"reason":"user_request"}}}'

local function jstr(s) return '"' .. s:gsub('"', '\\"') .. '"' end

-- Browser-tracker-like fields shared by every event (the JSON text after eid/dtm/stm), up to the
-- contexts, whose page view id is the device's (see device_ids).
local COMMON = '"tv":"js-4.10.1","tna":"sp1","aid":"shop","p":"web","url":' .. jstr(URL)
  .. ',"page":"Blue widget | Example Shop","refr":' .. jstr(REFR)
  .. ',"tz":"Europe/Berlin","lang":"de-DE","cs":"UTF-8","res":"1920x1080","cd":"24","cookie":"1"'
  .. ',"vp":"1280x720","ds":"1280x3400","co":"'
local CO_HEAD, CO_TAIL = (CONTEXTS_HEAD:gsub('"', '\\"')), (CONTEXTS_TAIL:gsub('"', '\\"')) .. '"'
-- Event-specific tails; an anonymous tracker sends the same without the ids.
local KINDS = {
  '"e":"pv",',
  '"e":"pp","pp_mix":"0","pp_max":"420","pp_miy":"0","pp_may":"1800",',
  '"e":"se","se_ca":"checkout","se_ac":"add-to-basket","se_la":"blue-widget","se_pr":"qty","se_va":"2",',
  '"e":"ue","ue_pr":' .. jstr(UE_LINK) .. ',',
}
local ANONYMIZE = '"e":"ue","ue_pr":' .. jstr(UE_ANON) .. ','

-- Per-thread state (each wrk thread has its own Lua state).
tid = 0
workload, runtag, stop_after = "get", "00000000", 1e9
counter = 0
sent, ok2xx, non2xx = 0, 0, 0
events_sent, anon_events, anonymize_events, anon_requests = 0, 0, 0, 0
t_first, t_last, cutoff = 0, 0, 0
verify_pending = false
local get_prefix, get_suffix, anon_header
local POOL = 256
local cookies, ncookies, next_slot = {}, 0, 1
cookies_sent = 0

-- a cookie header for a returning device (80%), or "" for a first visit / an empty pool, and the
-- cookie's value (nil for none). A request
-- that retires its device (anonymous with the cookie: an opt-out; or with an anonymize event) takes
-- the cookie out of the pool, as a browser drops it for the one the answer sets (or expires).
local function cookie_header(returning_share, retiring)
  if ncookies == 0 or math.random() >= returning_share then return "", nil end
  cookies_sent = cookies_sent + 1
  local i = math.random(1, ncookies)
  local value = cookies[i]
  if retiring then
    cookies[i] = cookies[ncookies]
    cookies[ncookies] = nil
    ncookies = ncookies - 1
  end
  return "Cookie: sp=" .. value .. "\r\n", value
end

local function uuid()
  counter = counter + 1
  -- runtag-tid-4rnd-arnd-counter: valid UUID v4 layout, unique per run (tid, counter) and across runs (runtag)
  return string.format("%s-%04x-4%03x-a%03x-%012x", runtag, tid, math.random(0, 4095),
    math.random(0, 4095), counter)
end

local function hex(digits)
  local out = {}
  for i = 1, digits do out[i] = string.format("%x", math.random(0, 15)) end
  return table.concat(out)
end

-- A device's tracker ids (duid, sid, its page view's id), as its browser tracker keeps them between
-- requests: each device its own, derived from the device id of the cookie it sends back (so new with
-- the cookie the collector sets after a rotation, as a tracker that resets its ids on anonymising
-- does); a first visit's are new. With one set of ids for every device, the first anonymize event
-- retired them for all, and every later named event was a retired identity's late event.
local function device_ids(cookie)
  local u = cookie and cookie:sub(1, 36) or ""
  if #u ~= 36 then u = hex(8) .. "-" .. hex(4) .. "-4" .. hex(3) .. "-a" .. hex(3) .. "-" .. hex(12) end
  local a, b, c, d, e = u:sub(1, 8), u:sub(10, 13), u:sub(15, 18), u:sub(20, 23), u:sub(25, 36)
  local duid = e:sub(1, 8) .. "-" .. d .. "-" .. c .. "-" .. b .. "-" .. e:sub(9, 12) .. a
  local sid = a:reverse() .. "-" .. c .. "-" .. b .. "-" .. d .. "-" .. e:reverse()
  local page = b .. c .. "-" .. d .. "-" .. e:sub(1, 4) .. "-" .. e:sub(5, 8) .. "-" .. e:sub(9, 12) .. a
  return ',"duid":"' .. duid .. '","sid":"' .. sid .. '","vid":"3","uid":"customer-1842"', page
end

local function event(kind_tail, ids, page, stm)
  return "{" .. kind_tail .. '"eid":"' .. uuid() .. '","dtm":"' .. stm .. '","stm":"' .. stm .. '",'
    .. COMMON .. CO_HEAD .. page .. CO_TAIL .. ids .. "}"
end

function setup(thread)
  _G.threads = _G.threads or {}
  table.insert(_G.threads, thread)
  thread:set("tid", #_G.threads)
end

function init(args)
  workload = args[1] or "get"
  runtag = args[2] or "00000000"
  stop_after = tonumber(args[3] or "1e9")
  math.randomseed(tid * 7919 + math.floor(clock(0) * 1000) % 1000003)
  cutoff = mono() + stop_after
  -- wrk calls request() once on thread 1 to verify the script, and never sends that request
  verify_pending = (tid == 1)
  local params = "e=pv&url=" .. urlenc(URL) .. "&page=" .. urlenc("Blue widget | Example Shop")
    .. "&refr=" .. urlenc(REFR) .. "&tv=js-4.10.1&tna=sp1&aid=shop&p=web&tz=Europe%2FBerlin"
    .. "&lang=de-DE&cs=UTF-8&res=1920x1080&cd=24&cookie=1&vp=1280x720&ds=1280x3400"
    .. "&duid=0b7a1d9e-5c1f-4a39-9f0e-3c3b1f6d2a11&sid=e1c4a7b2-8d3f-4e6a-b5c9-7f2e1d0a9b8c&vid=3"
    .. "&cx=" .. b64url(CONTEXTS)
  get_prefix = "GET /i?" .. params .. "&eid="
  get_suffix = " HTTP/1.1\r\nHost: " .. wrk.headers["Host"] .. "\r\n"
    .. "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/126.0 Safari/537.36\r\n"
    .. "Accept: image/avif,image/webp,*/*\r\nReferer: " .. URL .. "\r\n"
  anon_header = "SP-Anonymous: *\r\n"
end

local function post(nevents, anonymous)
  local stm = epoch_ms()
  local tails = {}
  local retiring = anonymous
  for i = 1, nevents do
    if workload == "mix" and math.random() < 0.01 then
      tails[i] = ANONYMIZE
      anonymize_events = anonymize_events + 1
      retiring = true
    else
      tails[i] = KINDS[(counter + i - 1) % #KINDS + 1]  -- as event() will count them
    end
  end
  local cookie, value = cookie_header(anonymous and 0.25 or 0.8, retiring)
  local ids, page = "", ""
  if anonymous then  -- an anonymous tracker sends no duid or sid; its page view's id is one for all
    page = "6c2f5e53-1e8b-4a7c-9d1b-2a1f2f3e4d5c"
  else
    ids, page = device_ids(value)
  end
  local evs = {}
  for i = 1, nevents do evs[i] = event(tails[i], ids, page, stm) end
  local body = '{"schema":"' .. PAYLOAD .. '","data":[' .. table.concat(evs, ",") .. "]}"
  events_sent = events_sent + nevents
  if anonymous then
    anon_requests = anon_requests + 1
    anon_events = anon_events + nevents
  end
  return "POST /com.snowplowanalytics.snowplow/tp2 HTTP/1.1\r\nHost: " .. wrk.headers["Host"] .. "\r\n"
    .. "Content-Type: application/json; charset=UTF-8\r\nOrigin: https://shop.example.com\r\n"
    .. "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/126.0 Safari/537.36\r\n"
    .. (anonymous and anon_header or "") .. cookie .. "Content-Length: " .. #body .. "\r\n\r\n" .. body
end

local function build()
  if t_first == 0 then t_first = mono() end
  sent = sent + 1
  if workload == "get" then
    events_sent = events_sent + 1
    return get_prefix .. uuid() .. "&stm=" .. epoch_ms() .. get_suffix .. (cookie_header(0.8, false)) .. "\r\n"
  elseif workload == "post1" then
    return post(1, false)
  elseif workload == "post10" then
    return post(10, false)
  else -- mix: browser batches of 3, 20% of requests from anonymous trackers, ~1% anonymize events
    return post(3, math.random() < 0.2)
  end
end

function request()
  local req = build()
  if verify_pending then -- first call ever in this state: forget what it counted
    verify_pending = false
    sent, events_sent, anon_events, anonymize_events, anon_requests, t_first = 0, 0, 0, 0, 0, 0
    cookies_sent = 0
  end
  return req
end

function delay()
  if mono() > cutoff then return 3600000 end -- park the connection: nothing in flight at the end
  return 0
end

function response(status, headers, body)
  t_last = mono()
  if status >= 200 and status < 300 then ok2xx = ok2xx + 1 else non2xx = non2xx + 1 end
  local set = headers["Set-Cookie"]
  if set and not set:find("Max%-Age=0") then
    local value = set:match("^sp=([^;]+)")
    if value and value ~= '""' then
      if ncookies < POOL then
        ncookies = ncookies + 1
        cookies[ncookies] = value
      else
        cookies[next_slot] = value
        next_slot = next_slot % POOL + 1
      end
    end
  end
end

function done(summary, latency, requests)
  local keys = { "sent", "ok2xx", "non2xx", "events_sent", "anon_events", "anonymize_events",
    "anon_requests", "cookies_sent" }
  local tot = {}
  for _, k in ipairs(keys) do tot[k] = 0 end
  local first, last = math.huge, 0
  for _, th in ipairs(_G.threads) do
    for _, k in ipairs(keys) do tot[k] = tot[k] + th:get(k) end
    local f, l = th:get("t_first"), th:get("t_last")
    if f > 0 and f < first then first = f end
    if l > last then last = l end
  end
  local e = summary.errors
  local parts = {}
  for _, k in ipairs(keys) do parts[#parts + 1] = string.format('"%s":%d', k, tot[k]) end
  local window = (last > first) and (last - first) or 0
  parts[#parts + 1] = string.format('"active_seconds":%.6f', window)
  parts[#parts + 1] = string.format('"duration_us":%d,"requests":%d,"bytes":%d', summary.duration,
    summary.requests, summary.bytes)
  parts[#parts + 1] = string.format(
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}',
    e.connect, e.read, e.write, e.status, e.timeout)
  parts[#parts + 1] = string.format(
    '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d,"mean":%.1f}',
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.max, latency.mean)
  io.write("BENCHJSON {" .. table.concat(parts, ",") .. "}\n")
end
