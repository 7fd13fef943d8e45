-- healthz.lua: GET /healthz, the HTTP ceiling (no Redis, no token). It keeps the same
-- per-answer bookkeeping as the other scripts, so the load generator's cost is alike.

dofile(os.getenv("BENCH_WRK_DIR") .. "/report.lua")

wrk.method = "GET"
wrk.path = "/healthz"

function init(args)
  init_done()
end

function response(status, headers, body)
  count_status(status)
end
