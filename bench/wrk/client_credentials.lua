-- client_credentials grant (RFC 6749 §4.4) with client_secret_basic, the same request for
-- every call: nothing is consumed, so the request is static and built once per thread.
--   cd bench/wrk && wrk -t2 -c32 -d10s --latency -s client_credentials.lua \
--       http://127.0.0.1:PORT/token -- CLIENT_ID CLIENT_SECRET [SCOPE]
-- An empty or absent SCOPE sends no scope parameter (the client's default applies).

local common = require("common")

function setup(thread)
  common.setup(thread)
end

-- wrk calls init() before it formats a static request, so fields set here are used.
function init(args)
  local client_id, client_secret, scope = args[1], args[2], args[3]
  if not client_id or not client_secret then
    error("usage: ... -- CLIENT_ID CLIENT_SECRET [SCOPE]")
  end
  local body = "grant_type=client_credentials"
  if scope and scope ~= "" then
    body = body .. "&scope=" .. common.form_encode(scope)
  end
  wrk.method = "POST"
  wrk.body = body
  wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
  wrk.headers["Accept"] = "application/json"
  wrk.headers["Authorization"] = common.basic_auth(client_id, client_secret)
end

function done(summary, latency, requests)
  common.done(summary, latency)
end
