-- wrk script: a mix of health, top-k, kNN and thumbnails, the traffic of
-- notebooks and the explorer. Every non-2xx is counted; 5xx fail the run.
local n = 0
local bad5xx, bad4xx = 0, 0
local groups = { "[3,17,42]", "[1]", "[5,9,11,20,33,40,50,60,61,62]", "[0,63]" }
local hdr = { ["Content-Type"] = "application/json" }

request = function()
  n = n + 1
  local kind = n % 4
  local g = groups[(n % #groups) + 1]
  local id = (n * 7919) % 10000
  if kind == 0 then
    return wrk.format("GET", "/v1/health")
  elseif kind == 1 then
    return wrk.format("POST", "/v1/query/topk", hdr,
      '{"model":"cnn","dataset":"fmnist","layer":"fc1","neurons":' .. g .. ',"k":10}')
  elseif kind == 2 then
    return wrk.format("POST", "/v1/query/knn", hdr,
      '{"model":"cnn","dataset":"fmnist","layer":"fc1","neurons":' .. g .. ',"k":10,"target":' .. id .. '}')
  else
    return wrk.format("GET", "/v1/datasets/fmnist/inputs/" .. id .. "/image.png")
  end
end

response = function(status, headers, body)
  if status >= 500 then bad5xx = bad5xx + 1 elseif status >= 400 then bad4xx = bad4xx + 1 end
end

done = function(summary, latency, requests)
  io.write(string.format("requests %d  errors(connect %d read %d write %d timeout %d status %d)\n",
    summary.requests, summary.errors.connect, summary.errors.read, summary.errors.write,
    summary.errors.timeout, summary.errors.status))
  io.write(string.format("p50 %.1f ms  p99 %.1f ms  max %.1f ms\n",
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000))
end
