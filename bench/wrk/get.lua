-- GET of the URL given to wrk (discovery or JWKS). The request is static (no request()
-- function), so wrk builds it once per thread and spends no Lua time per request; the
-- script only adds the machine-readable summary line.
--   cd bench/wrk && wrk -t2 -c32 -d10s --latency -s get.lua http://127.0.0.1:PORT/jwks

local common = require("common")

wrk.method = "GET"
wrk.headers["Accept"] = "application/json"

function setup(thread)
  common.setup(thread)
end

function done(summary, latency, requests)
  common.done(summary, latency)
end
