-- raw_requests.lua - sends pre-built raw HTTP requests, each once, in order.
--
-- wrk ... -s bench/wrk/raw_requests.lua URL -- FILE: FILE holds the requests back to
-- back, each preceded by its length in decimal and a newline (bench/
-- bench_shopify_webhooks.py --connections writes it), so bodies signed ahead of
-- time (Shopify webhooks: an HMAC each, a unique webhook id each) go out as they
-- were signed. Every thread reads the file and takes every thread-count-th
-- request from its tid; past the end a thread starts again (the server then sees
-- replays, which the caller counts from the server's own figures).
local common = dofile(debug.getinfo(1, "S").source:match("@?(.*/)") .. "common.lua")

local reqs, n, i = {}, 0, 0

function setup(thread) common.setup(thread) end

function init(args)
  local f = assert(io.open(args[1], "rb"))
  local data = f:read("*a")
  f:close()
  local pos, k = 1, 0
  local nthreads = tonumber(args[2] or "1")
  while pos <= #data do
    local nl = data:find("\n", pos, true)
    local len = tonumber(data:sub(pos, nl - 1))
    if k % nthreads == tid then
      n = n + 1
      reqs[n] = data:sub(nl + 1, nl + len)
    end
    k = k + 1
    pos = nl + 1 + len
  end
end

function request()
  i = i + 1
  if i > n then i = 1 end
  return reqs[i]
end

done = common.done
