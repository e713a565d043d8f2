-- Shared helpers of the wrk scripts in this folder. wrk resolves require() against
-- LuaJIT's package.path, whose first entry is ./?.lua, so wrk must run with this folder as
-- its working directory (bench/run_oidc.py does, and prints the `cd` in its command lines).

local M = {}

local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

-- Standard base64 with padding, for the HTTP Basic credentials (RFC 7617). Only run once
-- per thread, so clarity beats speed here.
function M.base64(input)
  local out = {}
  for i = 1, #input, 3 do
    local a, b, c = input:byte(i, i + 2)
    local n = a * 65536 + (b or 0) * 256 + (c or 0)
    local chars = {}
    for k = 3, 0, -1 do
      local index = math.floor(n / (64 ^ k)) % 64 + 1
      chars[#chars + 1] = B64:sub(index, index)
    end
    if not b then chars[3] = "=" end
    if not c then chars[4] = "=" end
    out[#out + 1] = table.concat(chars)
  end
  return table.concat(out)
end

-- application/x-www-form-urlencoded value encoding (client ids, secrets and tokens are
-- URL-safe in both servers, but a scope contains spaces).
function M.form_encode(value)
  return (value:gsub("[^%w%-%._~]", function(ch)
    if ch == " " then return "+" end
    return string.format("%%%02X", ch:byte())
  end))
end

-- client_secret_basic (RFC 6749 §2.3.1): id and secret are form-encoded, then base64'd.
function M.basic_auth(client_id, client_secret)
  return "Basic " .. M.base64(M.form_encode(client_id) .. ":" .. M.form_encode(client_secret))
end

-- setup() and done() run in wrk's main Lua state, apart from the threads' states; keeping
-- the thread objects here is how done() reads per-thread counters (thread:get()).
-- wrk calls setup(thread) and that thread's init() one thread at a time, so a thread
-- learns its own index here but cannot learn how many threads follow it: scripts that need
-- the count take it as an argument (refresh_token.lua).
M.threads = {}

function M.setup(thread)
  thread:set("thread_index", #M.threads)
  M.threads[#M.threads + 1] = thread
end

-- One machine-readable line for bench/run_oidc.py. wrk's own text summary only reports
-- "Non-2xx or 3xx responses" when there are some; this line always carries every error
-- count, exact percentiles in microseconds, and whatever per-thread fields `extra` names
-- (summed over threads; booleans are OR-ed).
function M.done(summary, latency, extra)
  local e = summary.errors
  local fields = {
    string.format('"requests":%d', summary.requests),
    string.format('"duration_us":%d', summary.duration),
    string.format('"bytes":%d', summary.bytes),
    string.format('"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}',
      e.connect, e.read, e.write, e.status, e.timeout),
    string.format('"latency_us":{"min":%d,"mean":%.1f,"max":%d,"p50":%d,"p90":%d,"p99":%d}',
      latency.min, latency.mean, latency.max,
      latency:percentile(50), latency:percentile(90), latency:percentile(99)),
  }
  for _, name in ipairs(extra or {}) do
    local total, flag = 0, nil
    for _, t in ipairs(M.threads) do
      local v = t:get(name)
      if type(v) == "boolean" then
        flag = flag or v
      elseif type(v) == "number" then
        total = total + v
      end
    end
    if flag ~= nil then
      fields[#fields + 1] = string.format('"%s":%s', name, tostring(flag))
    else
      fields[#fields + 1] = string.format('"%s":%d', name, total)
    end
  end
  io.write("WRK_RESULT_JSON {" .. table.concat(fields, ",") .. "}\n")
end

return M
