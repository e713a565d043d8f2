-- refresh_token grant (RFC 6749 §6) with client_secret_basic. Refresh tokens rotate: a
-- value is good for one request only, so every request carries a different pre-minted
-- token read from TOKENS_FILE (one per line).
--   cd bench/wrk && wrk -t2 -c32 -d10s --latency -s refresh_token.lua \
--       http://127.0.0.1:PORT/token -- CLIENT_ID CLIENT_SECRET TOKENS_FILE THREADS
-- THREADS must equal wrk's -t (a thread cannot learn the count in time; see common.lua).
--
-- No value is sent twice: thread i of n takes lines i+1, i+1+n, i+1+2n, ... of the file,
-- and within a thread requests are generated one after another, whatever the number of
-- connections. (wrk also calls request() once on thread 0 before the run, to check for
-- pipelining, and discards the result: that token is skipped, not reused.)
--
-- A thread that runs out stops (thread:stop()) and sets `exhausted`, which the done()
-- line reports; bench/run_oidc.py then discards the run and mints more tokens, because a
-- thread stopping early would lower the rate wrk computes over the full -d.
-- The last request a thread generates before stopping carries the placeholder token
-- "exhausted", which both servers reject, so it can only add an error, never a reuse.

local common = require("common")

local requests = {}  -- pre-formatted HTTP requests, one per token of this thread
local next_index = 1
used = 0             -- globals, so that done() can read them via thread:get()
available = 0
exhausted = false
thread_count = 0
local fallback       -- request sent once the tokens are gone

function setup(thread)
  common.setup(thread)
end

function init(args)
  local client_id, client_secret, path = args[1], args[2], args[3]
  thread_count = tonumber(args[4])
  if not client_id or not client_secret or not path or not thread_count then
    error("usage: ... -- CLIENT_ID CLIENT_SECRET TOKENS_FILE THREADS")
  end
  local headers = {
    ["Content-Type"] = "application/x-www-form-urlencoded",
    ["Accept"] = "application/json",
    ["Authorization"] = common.basic_auth(client_id, client_secret),
  }
  local function format(token)
    return wrk.format("POST", nil, headers,
      "grant_type=refresh_token&refresh_token=" .. common.form_encode(token))
  end
  -- thread_index was set by this thread's setup(), which wrk runs just before init().
  local index, count = thread_index, thread_count
  if index >= count then
    error("THREADS argument (" .. count .. ") is smaller than wrk's -t")
  end
  local file = assert(io.open(path, "r"))
  local line_number = 0
  for line in file:lines() do
    if line ~= "" then
      if line_number % count == index then
        -- Formatting every request now keeps request() to a table lookup, so the load
        -- generator costs the same per request as with the static scripts.
        requests[#requests + 1] = format(line)
      end
      line_number = line_number + 1
    end
  end
  file:close()
  available = #requests
  fallback = format("exhausted")
end

function request()
  local req = requests[next_index]
  if req == nil then
    if not exhausted then
      exhausted = true
      wrk.thread:stop()
    end
    return fallback
  end
  requests[next_index] = nil  -- let the string go; it is never sent again
  next_index = next_index + 1
  used = used + 1
  return req
end

function done(summary, latency, requests)
  -- More threads than declared fails in init(); fewer would leave lines unsent, which is
  -- harmless, but the harness is told so that a wrong command line does not go unnoticed.
  local declared = common.threads[1] and common.threads[1]:get("thread_count") or 0
  if declared ~= #common.threads then
    io.write(string.format("WARNING: THREADS=%d but wrk ran %d threads\n",
      declared, #common.threads))
  end
  common.done(summary, latency, {"used", "available", "exhausted"})
end
