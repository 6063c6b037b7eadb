-- reserve.lua - wrk script: POST /v1/reservations, one line of qty 1 on one of the 1000
-- benchmark positions (cycling), a unique id per request ("<run>-<thread>-<counter>"):
--   wrk ... -s bench/wrk/reserve.lua URL -- json|msgpack [run_tag]
-- json: Content-Type application/json; msgpack: a hand-encoded msgpack body with
-- Content-Type application/msgpack (the answer follows the request's format).
-- The positions must hold enough stock for the whole run (bench/load_positions.py).
-- wrk counts non-2xx answers itself (see common.lua): a run with any is void.
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local c = dofile(dir .. "common.lua")

local enc, tag, counter, p = "json", "r", 0, 0
local head        -- request line and headers up to "Content-Length: "
local pre, posts = "", {}   -- body = pre .. encoded id .. posts[position]

-- The body is built as prefix .. id .. per-position suffix, and the request by hand
-- (wrk.format rebuilds every header each call): the client must cost little next to
-- the server, since both share the machine's cores.
function init(args)
  enc = c.encoding(args)
  tag = (args and args[2]) or tostring(os.time())
  local ctype = enc == "msgpack" and "application/msgpack" or "application/json"
  local host = wrk.headers["Host"] or wrk.host
  head = "POST /v1/reservations HTTP/1.1\r\nHost: " .. host .. "\r\nContent-Type: " .. ctype ..
         "\r\nContent-Length: "
  for q = 0, c.POSITIONS - 1 do
    local sku, location = c.sku(q), c.location(q)
    if enc == "msgpack" then
      -- {"id": id, "lines": [{"sku": sku, "location": location, "qty": 1}]}
      posts[q + 1] = table.concat({
        c.mp_str("lines"), string.char(0x91),
        string.char(0x83), c.mp_str("sku"), c.mp_str(sku),
        c.mp_str("location"), c.mp_str(location),
        c.mp_str("qty"), string.char(0x01),
      })
    else
      posts[q + 1] = string.format('","lines":[{"sku":"%s","location":"%s","qty":1}]}', sku, location)
    end
  end
  pre = enc == "msgpack" and (string.char(0x82) .. c.mp_str("id")) or '{"id":"'
  p = (tid or 0) * 97 % c.POSITIONS
end

function request()
  counter = counter + 1
  p = p % c.POSITIONS + 1
  local id = tag .. "-" .. (tid or 0) .. "-" .. counter
  if enc == "msgpack" then id = c.mp_str(id) end
  local body = pre .. id .. posts[p]
  return head .. #body .. "\r\n\r\n" .. body
end

setup = c.setup
done = c.done
