-- wrk script of benchmarks/allocate.py: POST {"size": 1000} as JSON to the URL given to wrk.
--
-- done() prints one line, "WRK_JSON {...}", that the runner parses instead of wrk's text
-- report: requests, duration, errors (errors.status counts responses with status >= 400, what
-- wrk reports as "Non-2xx or 3xx responses") and latency in microseconds.
-- No response() function on purpose: defining one makes wrk hand every body to Lua, which
-- costs the load generator CPU it shares with the servers.

wrk.method = "POST"
wrk.body = '{"size": 1000}'
wrk.headers["Content-Type"] = "application/json"

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "bytes": %d, '
      .. '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, '
      .. '"latency_us": {"mean": %.2f, "stdev": %.2f, "min": %.0f, "max": %.0f, '
      .. '"p50": %.0f, "p90": %.0f, "p99": %.0f}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.stdev, latency.min, latency.max,
    latency:percentile(50), latency:percentile(90), latency:percentile(99)
  ))
end
