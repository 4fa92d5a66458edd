-- Cycles through pre-built requests, one per line of a file: header name, value, ..., body, tab-separated.
-- Usage: wrk -t THREADS -s cycle.lua URL -- FILE METHOD PATH THREADS
-- Thread k of n takes lines k, k+n, ...: no two threads send the same request.
-- done() prints one JSON line with the counts and latency percentiles (microseconds).

local counter = 0

function setup(thread)
  thread:set("index", counter)
  counter = counter + 1
end

function init(args)
  local file, method, path = args[1], args[2], args[3]
  local total = tonumber(args[4])
  requests = {}
  local n = 0
  for line in io.lines(file) do
    if n % total == index then
      local fields = {}
      for field in (line .. "\t"):gmatch("([^\t]*)\t") do
        table.insert(fields, field)
      end
      local body = table.remove(fields)
      local headers = {}
      for i = 1, #fields, 2 do
        headers[fields[i]] = fields[i + 1]
      end
      table.insert(requests, wrk.format(method, path, headers, body))
    end
    n = n + 1
  end
  position = 0
end

function request()
  position = position + 1
  if position > #requests then
    position = 1
  end
  return requests[position]
end

function done(summary, latency, requests)
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "status_errors": %d, "socket_errors": %d, ' ..
    '"p50_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
