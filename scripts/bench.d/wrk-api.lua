-- wrk script for the project's api (scripts/bench). Env: MODE = range | latest | aggregate,
-- SID = session cookie, DEVICES (1000), WINDOW_S (3600).
--   range:     GET /api/v1/devices/{rand}/readings?from=&to=  random one-hour window of the data
--              set (500 samples x 60 s from 2026-01-01T00:00:00Z, 2 metrics) -> ~120 readings
--   latest:    GET /api/v1/devices/{rand}/readings/latest
--   aggregate: GET /api/v1/devices/{rand}/readings/aggregate?metric=temperature&from=<day>&to=<day+24h>&bucket=1h
-- Prints the same JSON summary line as the reference's wrk-readings.lua.
local base = 1767225600
local span = 500 * 60
local window = tonumber(os.getenv("WINDOW_S") or "3600")
local devices = tonumber(os.getenv("DEVICES") or "1000")
local mode = os.getenv("MODE") or "range"
local sid = os.getenv("SID") or ""
local counter = 0

setup = function(thread)
  counter = counter + 1
  thread:set("tid", counter)
end

init = function(args)
  math.randomseed(os.time() + (tid or 0) * 7919)
  wrk.headers["Cookie"] = "sid=" .. sid
  wrk.headers["Accept"] = "application/json"
end

local function iso(s)
  return os.date("!%Y-%m-%dT%H:%M:%SZ", s)
end

request = function()
  local dev = math.random(1, devices)
  local prefix = "/api/v1/devices/" .. dev .. "/readings"
  if mode == "latest" then
    return wrk.format("GET", prefix .. "/latest")
  elseif mode == "aggregate" then
    return wrk.format("GET", prefix .. "/aggregate?metric=temperature&from=" .. iso(base) .. "&to=" .. iso(base + 86400) .. "&bucket=1h")
  end
  local s = base + math.random(0, math.max(0, span - window))
  return wrk.format("GET", prefix .. "?from=" .. iso(s) .. "&to=" .. iso(s + window))
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'JSON {"requests":%d,"duration_s":%.3f,"rps":%.1f,"bytes":%d,"lat_mean_ms":%.2f,"lat_p50_ms":%.2f,"lat_p90_ms":%.2f,"lat_p99_ms":%.2f,"lat_max_ms":%.2f,"err_connect":%d,"err_read":%d,"err_write":%d,"err_status":%d,"err_timeout":%d}\n',
    summary.requests, summary.duration / 1e6, summary.requests / (summary.duration / 1e6), summary.bytes,
    latency.mean / 1000, latency:percentile(50) / 1000, latency:percentile(90) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000,
    e.connect, e.read, e.write, e.status, e.timeout))
end
