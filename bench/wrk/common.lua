-- common.lua - shared by the atpd wrk scripts (loaded with dofile from their folder).
--
-- The 1000 benchmark positions: SKU "BENCH-%03d" (100 SKUs) x location "L%d" (10
-- locations), numbered 0..999 in that order; bench/load_positions.py creates them.
-- done() prints machine-readable "wrk_* value" lines that bench/run.sh parses; a run
-- with wrk_non2xx > 0 or socket errors is void. The scripts define no `response`
-- hook: with one, wrk hands every response's headers and body to Lua, a client cost
-- that nginx's own figure (plain wrk, no script) does not pay. wrk counts answers
-- with a status above 399 itself (summary.errors.status).
local M = {}

M.POSITIONS = 1000

function M.sku(i) return string.format("BENCH-%03d", math.floor(i / 10)) end
function M.location(i) return string.format("L%d", i % 10) end

local threads = {}
local next_tid = 0

-- Runs in the main Lua state, once per thread before it starts.
function M.setup(thread)
  thread:set("tid", next_tid)
  next_tid = next_tid + 1
  table.insert(threads, thread)
end

-- Runs in the main Lua state after the run.
function M.done(summary, latency, requests)
  local e = summary.errors
  local secs = summary.duration / 1e6
  io.write(string.format("wrk_requests %d\n", summary.requests))
  io.write(string.format("wrk_rps %.0f\n", summary.requests / secs))
  io.write(string.format("wrk_non2xx %d\n", e.status))
  io.write(string.format("wrk_checked %d\n", summary.requests))
  io.write(string.format("wrk_socket_errors %d\n", e.connect + e.read + e.write + e.timeout))
  io.write(string.format("wrk_p50_us %d\n", latency:percentile(50)))
  io.write(string.format("wrk_p90_us %d\n", latency:percentile(90)))
  io.write(string.format("wrk_p95_us %d\n", latency:percentile(95)))
  io.write(string.format("wrk_p98_us %d\n", latency:percentile(98)))
  io.write(string.format("wrk_p99_us %d\n", latency:percentile(99)))
  io.write(string.format("wrk_p999_us %d\n", latency:percentile(99.9)))
  io.write(string.format("wrk_max_us %d\n", latency.max))
end

-- msgpack helpers for hand-encoded bodies (str keys, small ints).
function M.mp_str(s)
  local n = #s
  if n < 32 then return string.char(0xa0 + n) .. s end
  if n < 256 then return string.char(0xd9, n) .. s end
  return string.char(0xda, math.floor(n / 256), n % 256) .. s
end

-- Both encodings are named by the first script argument: json (default) or msgpack.
function M.encoding(args)
  local enc = (args and args[1]) or "json"
  if enc ~= "json" and enc ~= "msgpack" then error("encoding must be json or msgpack, got " .. enc) end
  return enc
end

return M
