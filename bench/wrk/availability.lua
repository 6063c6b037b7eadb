-- availability.lua - wrk script: GET /v1/availability?sku=S&location=L cycling over the
-- 1000 benchmark positions (see common.lua), answered in JSON or, with
--   wrk ... -s bench/wrk/availability.lua URL -- msgpack
-- in msgpack (Accept: application/msgpack). wrk counts non-2xx answers itself (see common.lua).
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local c = dofile(dir .. "common.lua")

local reqs, n, i = {}, 0, 0

function init(args)
  local headers = {}
  if c.encoding(args) == "msgpack" then headers["Accept"] = "application/msgpack" end
  for p = 0, c.POSITIONS - 1 do
    reqs[p + 1] = wrk.format("GET", string.format("/v1/availability?sku=%s&location=%s",
                                                  c.sku(p), c.location(p)), headers)
  end
  n = #reqs
  i = (tid or 0) * 97 % n
end

function request()
  i = i % n + 1
  return reqs[i]
end

setup = c.setup
done = c.done
