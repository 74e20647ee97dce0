#!/usr/bin/env bash
# bench/run.sh - load benchmarks of fuseproxy on loopback. Everything it starts it stops.
#
#   bench/run.sh [load]     fuseproxy with the memory store, the redis store and breakers
#                           disabled, each with UPSTREAMS upstreams, side by side with the
#                           backend alone ("direct") and a bare httputil proxy ("goproxy")
#   bench/run.sh scale      fuseproxy with 10,000 upstreams: RSS idle and under load
#   bench/run.sh shared     ../shared/bench/run.sh (nginx, HAProxy, Caddy, bare httputil)
#                           with fuseproxy added as extra targets
#   bench/run.sh tls        HTTP/2 over TLS: fuseproxy, nginx and Caddy, each terminating TLS
#                           (h2 by ALPN, one self-signed certificate) in front of the same
#                           HTTP/1.1 backend, loaded by h2load in interleaved rounds
#   bench/run.sh go         the Go benchmarks (breaker, handler, lookup+admit, metrics, heap per upstream,
#                           the redis store's flush loop)
#
# load: builds fuseproxy, starts the bench backend (../shared/bench/backend when present,
# else `fuseproxy flaky`; the same backend process serves every target), a private
# redis-server on REDIS_PORT and three fuseproxy replicas; runs wrk -c CONNS against each
# target in interleaved rounds (A B C..., A B C..., ...), each request going to the next of
# the UPSTREAMS upstreams (path /u<i>/, routed by path prefix; hosts u<i>.bench route too).
# Per run it prints req/s, p50/p99, the proxy process's CPU µs per request (utime+stime
# from /proc/<pid>/stat), the whole machine's busy CPU µs per request (/proc/stat, steal
# excluded), CPU steal and the load average; for the redis replica, Redis commands per
# proxied request from INFO commandstats (all commands, which include those run inside
# Lua scripts, and top-level EVALSHA alone). After the rounds it measures the redis
# replica's Redis commands/s while idle (IDLE seconds without traffic), per upstream.
#
# Knobs (environment, defaults shown):
#   DURATION=10s WARMUP=2s ROUNDS=3 CONNS=32 THREADS=1 UPSTREAMS=10 IDLE=5
#   TARGETS="direct goproxy memory redis nobreaker"   (goproxy needs ../shared/bench);
#                       "accesslog" is memory with the access log on, to a file beside its
#                       config (sample_rate 1, ACCESS_SAMPLE to change it); a fuseproxy
#                       target may carry its own number of upstreams, requests spread over all
#                       of them: memory:10000; and environment: memory@GOGC=400 or
#                       memory:10000@GOGC=200,GOMAXPROCS=1;
#                       "before" runs FP_BEFORE_BIN (an older build) with the memory store;
#                       "targets3" and "eject" give each upstream three targets (the backend
#                       under three host:port names), with outlier detection off and on
#                       (memory store; redis-targets3 and redis-eject with the redis store);
#                       "retries" (and redis-retries) are targets3 with retries on (3
#                       attempts, the default budget), none happening: compare with targets3
#                       "keyed" and "redis-keyed" give each upstream per-key breakers on
#                       X-Tenant-ID (issue #16; with TENANTS=N every request carries one of N
#                       tenants, the next one each request, for every target alike)
#   TENANTS=0           X-Tenant-ID values cycled over by the load (0: no header)
#   FP_ENV=""           environment for the fuseproxy processes, e.g. "GOGC=400 GOMAXPROCS=1"
#   FLUSH=100ms         store.flush_interval of the redis and postgres replicas
#   (target "postgres": the postgres store on a private PostgreSQL on PORT_BASE+298,
#   initdb'd under the run's directory, pg_stat_statements counting its statements)
#   SCALE_UPSTREAMS=10000 SCALE_HOT=1000 SCALE_DURATION=10s   (scale mode)
#   SCALE_TARGETS="memory redis memory@GOGC=400"             (scale mode replicas; also postgres)
#   BENCH_WORK=/tmp/fuseproxy-bench-local   output: $BENCH_WORK/results/<mode>-<stamp>/
#   PORT_BASE=19080     backend PORT_BASE, goproxy +1, fuseproxy +10.., admin +20.., redis +299
#
# tls: needs nginx, caddy, h2load (nghttp2-client) and openssl. Each target gets
#   h2load -c CONNS -m STREAMS -t THREADS -D DURATION (after WARMUP of the same) over
#   HTTP/2, TLS 1.3. Per run: req/s, mean latency, the proxy's own CPU µs per request
#   (utime+stime of its processes: nginx's master and workers), the backend's, and the
#   whole machine's. TLS_TARGETS="fuseproxy nginx caddy caddy-ka" (fuseproxy: memory
#   store, one upstream, breaker on); STREAMS=10. nginx runs worker_processes auto (2
#   here), like GOMAXPROCS, with 256 idle backend connections per worker; Caddy with its
#   defaults, and caddy-ka with 1024 idle backend connections (as ../shared/bench).
#
# shared: runs ../shared/bench/run.sh with CONNS=32 and its built-in targets plus
#   fp-memory=http://127.0.0.1:18090/  fp-redis=http://127.0.0.1:18091/  fp-nobreaker=http://127.0.0.1:18092/
# started through EXTRA_START; the redis replica uses the harness's Redis (127.0.0.1:18379)
# and every replica proxies to the harness's backend (http://127.0.0.1:18080). Set
# SHARED_TARGETS to choose the built-ins, FP_TARGETS (memory redis nobreaker) the replicas;
# DURATION, ROUNDS, WARMUP, CONNS pass through.
set -euo pipefail

MODE=${1:-load}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SHARED=$(cd "$ROOT/.." && pwd)/shared/bench
WORK=${BENCH_WORK:-${TMPDIR:-/tmp}/fuseproxy-bench-local}
DURATION=${DURATION:-10s} WARMUP=${WARMUP:-2s} ROUNDS=${ROUNDS:-3} CONNS=${CONNS:-32} THREADS=${THREADS:-1}
UPSTREAMS=${UPSTREAMS:-10} IDLE=${IDLE:-5} TENANTS=${TENANTS:-0} FLUSH=${FLUSH:-100ms} FP_ENV=${FP_ENV:-} ACCESS_SAMPLE=${ACCESS_SAMPLE:-1}
TARGETS=${TARGETS:-"direct goproxy memory redis nobreaker"}
SCALE_UPSTREAMS=${SCALE_UPSTREAMS:-10000} SCALE_HOT=${SCALE_HOT:-1000} SCALE_DURATION=${SCALE_DURATION:-10s}
PORT_BASE=${PORT_BASE:-19080}
BACKEND_PORT=$PORT_BASE GOPROXY_PORT=$((PORT_BASE + 1)) REDIS_PORT=$((PORT_BASE + 299)) PG_PORT=$((PORT_BASE + 298))
declare -A FP_PORT=() ADMIN_PORT=() # assigned by start_fp: PORT_BASE+10.. and PORT_BASE+40..
NEXT_FP=0

case $MODE in
  -h | --help | help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
esac

# ---- config generation -------------------------------------------------------
# gen_config FILE NAME STORE(memory|redis|none|accesslog) UPSTREAMS BACKEND_URL LISTEN ADMIN REDIS_URL [TARGETS: one|three|eject|retries]
# Upstream u<i> is routed by host u<i>.bench and by path prefix /u<i>/; "/" goes to u0.
gen_config() {
  local file=$1 name=$2 store=$3 n=$4 backend=$5 listen=$6 admin=$7 redis_url=${8:-} targets=${9:-one} i enabled=true driver=memory
  local tlist="\"$backend\"" extra=""
  [[ $store == none ]] && enabled=false
  [[ $store == redis ]] && driver=redis
  [[ $store == postgres ]] && driver=postgres
  if [[ $targets == keyed ]]; then
    extra=", keyed: {from: [header:X-Tenant-ID]}"
  elif [[ $targets != one ]]; then
    # Three targets that are the same backend under three host:port names.
    local port=${backend##*:}
    tlist="\"http://127.0.0.1:$port\", \"http://localhost:$port\", \"http://[::ffff:127.0.0.1]:$port\""
    [[ $targets == eject ]] && extra=", outlier_detection: {enabled: true}"
    [[ $targets == retries ]] && extra=", retries: {attempts: 3}"
  fi
  {
    echo "# generated by bench/run.sh: $name, $n upstreams, store $store"
    echo "listen: \"$listen\""
    echo "admin: {listen: \"$admin\"}"
    echo "log: {format: json, level: warn}"
    echo "events: {enabled: false}"
    [[ $store == accesslog ]] && echo "access_log: {enabled: true, path: \"$file.access.log\", sample_rate: $ACCESS_SAMPLE}"
    echo "store:"
    echo "  driver: $driver"
    echo "  replica_id: $(tr -c 'A-Za-z0-9_.\n-' '-' <<<"$name")"
    if [[ $driver == redis ]]; then
      echo "  flush_interval: $FLUSH"
      echo "  redis: {url: \"$redis_url\", prefix: \"bench-$(tr -c 'A-Za-z0-9_.\n-' '-' <<<"$name")\"}"
    elif [[ $driver == postgres ]]; then
      echo "  flush_interval: $FLUSH"
      echo "  postgres: {url: \"postgres://postgres@127.0.0.1:$PG_PORT/postgres?sslmode=disable\", prefix: \"b$(tr -c 'a-z0-9_\n' '_' <<<"${name,,}" | cut -c1-20)_\"}"
    fi
    echo "upstreams:"
    for ((i = 0; i < n; i++)); do
      echo "  u$i: {targets: [$tlist], breaker: {enabled: $enabled}$extra}"
    done
    echo "routes:"
    for ((i = 0; i < n; i++)); do
      echo "  - {host: u$i.bench, upstream: u$i}"
    done
    for ((i = 0; i < n; i++)); do
      echo "  - {path_prefix: /u$i/, upstream: u$i}"
    done
    echo "  - {path_prefix: /, upstream: u0}"
  } >"$file"
}

# ---- extra targets for the shared harness (run by its EXTRA_START) ------------------
if [[ $MODE == _extra ]]; then
  bin=$2
  shift 2
  pids=()
  trap 'kill -TERM "${pids[@]}" 2>/dev/null; wait; exit 0' TERM INT
  for cfg in "$@"; do
    "$bin" serve -config "$cfg" &
    pids+=($!)
  done
  wait
  exit 0
fi

# ---- process management ----------------------------------------------------------
PIDS=() PNAMES=()
cleanup() {
  local i pid
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    pid=${PIDS[$i]}
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
      wait "$pid" 2>/dev/null || true
      echo "stopped ${PNAMES[$i]} (pid $pid)"
    fi
  done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start() { # start NAME CMD...   (output to logs/NAME.log); sets LAST_PID
  local name=$1; shift
  "$@" >"$OUT/logs/$name.log" 2>&1 &
  LAST_PID=$!
  PIDS+=("$LAST_PID") PNAMES+=("$name")
  echo "started $name (pid $LAST_PID)"
}

wait_http() { # wait_http URL SECONDS
  local i
  for ((i = 0; i < $2 * 10; i++)); do
    [[ $(curl -s -o /dev/null -w '%{http_code}' "$1" 2>/dev/null) == 200 ]] && return 0
    sleep 0.1
  done
  echo "no 200 from $1 after $2 s" >&2
  return 1
}

port_free() { ! ss -Hltn "sport = :$1" | grep -q .; }

build() {
  mkdir -p "$WORK/bin"
  echo "== building fuseproxy"
  (cd "$ROOT" && go build -o "$WORK/bin/fuseproxy" ./cmd/fuseproxy)
  if [[ -d $SHARED/backend ]]; then
    echo "== building the bench backend and the bare httputil proxy from $SHARED"
    (cd "$SHARED" && go build -o "$WORK/bin/" ./backend ./goproxy)
  fi
}

# ---- measurements ----------------------------------------------------------------
HZ=$(getconf CLK_TCK)
# Whole-machine ticks: "total idle+iowait steal".
cpu_snap() { local _ u n s i w q sq st; read -r _ u n s i w q sq st _ </proc/stat; echo "$((u + n + s + i + w + q + sq + st)) $((i + w)) $st"; }
# utime+stime ticks of a process (fields 14 and 15; the command name may contain spaces).
proc_ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"; }
# "all evalsha" command calls in Redis so far, INFO excluded (the measurement's own).
redis_calls() {
  redis-cli -p "$REDIS_PORT" info commandstats | tr -d '\r' |
    awk -F'[:=,]' '/^cmdstat_/ && $1 != "cmdstat_info" { all += $3 } $1 == "cmdstat_evalsha" { ev = $3 } END { printf "%d %d\n", all, ev }'
}
parse_wrk() { # rps,p50_ms,p99_ms,errors,requests
  awk 'function ms(v,  n, u) { n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
         return u == "us" ? n / 1000 : u == "s" ? n * 1000 : u == "m" ? n * 60000 : n }
       /^ +50% / { p50 = ms($2) }
       /^ +99% / { p99 = ms($2) }
       /requests in/ { reqs = $1 }
       /Socket errors:/ { gsub(",", ""); err += $4 + $6 + $8 + $10 }
       /Non-2xx or 3xx responses:/ { err += $5 }
       /^Requests\/sec:/ { rps = $2 }
       END { printf "%.2f,%.4f,%.4f,%d,%d\n", rps, p50, p99, err, reqs }' "$1"
}
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
hwm_kib() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status"; }

write_lua() { # write_lua FILE N OFFSET: request i goes to /u<OFFSET + i mod N>/ (as tenant t<i mod TENANTS>)
  cat >"$1" <<EOF
local n, off, i, tenants, j = $2, ${3:-0}, 0, $TENANTS, 0
local h = {}
request = function()
  i = i + 1
  if i >= n then i = 0 end
  if tenants > 0 then
    j = j + 1
    if j >= tenants then j = 0 end
    h["X-Tenant-ID"] = "t" .. j
    return wrk.format(nil, "/u" .. (off + i) .. "/", h)
  end
  return wrk.format(nil, "/u" .. (off + i) .. "/")
end
EOF
}

env_info() {
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "kernel: $(uname -sr)"
  echo "cpus: $(nproc) x $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)"
  echo "go: $(go version | cut -d' ' -f3)"
  echo "wrk: $(wrk -v 2>&1 | head -1 | cut -d' ' -f2)"
  echo "redis: $(redis-server --version | grep -o 'v=[0-9.]*' | cut -d= -f2)"
  echo "fuseproxy: $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?')$(cd "$ROOT" && git diff --quiet HEAD -- proxy breaker store cmd internal 2>/dev/null || echo ' + uncommitted changes')"
  echo "loadavg before: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "settings: DURATION=$DURATION WARMUP=$WARMUP ROUNDS=$ROUNDS CONNS=$CONNS THREADS=$THREADS UPSTREAMS=$UPSTREAMS FLUSH=$FLUSH FP_ENV=\"$FP_ENV\""
}

setup_out() {
  STAMP=$(date +%Y%m%d-%H%M%S)
  OUT=$WORK/results/$1-$STAMP
  mkdir -p "$OUT/wrk" "$OUT/logs" "$OUT/cfg" "$OUT/redis"
  ln -sfn "$1-$STAMP" "$WORK/results/latest-$1"
}

start_backend() {
  port_free "$BACKEND_PORT" || { echo "port $BACKEND_PORT in use (set PORT_BASE)" >&2; exit 1; }
  if [[ -x $WORK/bin/backend ]]; then
    start backend "$WORK/bin/backend" -host 127.0.0.1 -port "$BACKEND_PORT" -size 64
  else
    start backend "$WORK/bin/fuseproxy" flaky -listen "127.0.0.1:$BACKEND_PORT"
  fi
  BACKEND_PID=$LAST_PID
  wait_http "http://127.0.0.1:$BACKEND_PORT/" 10
}

start_redis() {
  port_free "$REDIS_PORT" || { echo "port $REDIS_PORT in use (set PORT_BASE)" >&2; exit 1; }
  start redis redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no --dir "$OUT/redis" --loglevel warning
  REDIS_PID=$LAST_PID
  for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "redis on $REDIS_PORT did not answer" >&2
  exit 1
}

# start_postgres: a private PostgreSQL on PG_PORT (Debian's binaries; as the OS user
# postgres when run as root), pg_stat_statements on to count the store's statements.
start_postgres() {
  port_free "$PG_PORT" || { echo "port $PG_PORT in use (set PORT_BASE)" >&2; exit 1; }
  local bin dir=$OUT/pg as=()
  bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  [[ -x $bin/initdb ]] || { echo "PostgreSQL not found (apt-get install postgresql)" >&2; exit 1; }
  mkdir -p "$dir"
  if [[ $(id -u) == 0 ]]; then
    chown postgres: "$dir"
    as=(setpriv --reuid=postgres --regid=postgres --init-groups --)
  fi
  "${as[@]}" "$bin/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 >"$OUT/logs/initdb.log" 2>&1
  start postgres "${as[@]}" "$bin/postgres" -D "$dir/data" -p "$PG_PORT" -k "$dir" -c listen_addresses=127.0.0.1 \
    -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300 \
    -c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track=top
  PG_PID=$LAST_PID
  for _ in $(seq 100); do
    psql_q "CREATE EXTENSION IF NOT EXISTS pg_stat_statements" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "postgres on $PG_PORT did not answer" >&2
  exit 1
}
psql_q() { psql -X -q -A -t -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -c "$1"; }
# "all select" statements PostgreSQL ran so far (top level, the measurement's own
# excluded): every statement, and those that call the store's functions.
pg_calls() {
  psql_q "SELECT coalesce(sum(calls), 0), coalesce(sum(calls) FILTER (WHERE query ILIKE 'select%'), 0)
    FROM pg_stat_statements WHERE query NOT ILIKE '%pg_stat_statements%'" | tr '|' ' '
}
# store_calls NAME: Redis commands for a target on the redis store, PostgreSQL
# statements for one on the postgres store ("all scripts-or-functions").
store_calls() {
  if [[ $1 == *postgres* ]]; then pg_calls; else redis_calls; fi
}

start_fp() { # start_fp NAME STORE UPSTREAMS TARGETS [ENV...] -> sets PID[NAME], FP_PORT[NAME]
  local name=$1 store=$2 n=$3 targets=$4 cfg
  shift 4
  FP_PORT[$name]=$((PORT_BASE + 10 + NEXT_FP)) ADMIN_PORT[$name]=$((PORT_BASE + 40 + NEXT_FP))
  NEXT_FP=$((NEXT_FP + 1))
  cfg=$OUT/cfg/$name.yaml
  port_free "${FP_PORT[$name]}" || { echo "port ${FP_PORT[$name]} in use (set PORT_BASE)" >&2; exit 1; }
  gen_config "$cfg" "$name" "$store" "$n" "http://127.0.0.1:$BACKEND_PORT" "127.0.0.1:${FP_PORT[$name]}" \
    "127.0.0.1:${ADMIN_PORT[$name]}" "redis://127.0.0.1:$REDIS_PORT/0" "$targets"
  local bin=$WORK/bin/fuseproxy
  [[ $name == before ]] && bin=$FP_BEFORE_BIN
  # shellcheck disable=SC2086 # FP_ENV is a list of VAR=value words
  start "fp-$name" env $FP_ENV "$@" "$bin" serve -config "$cfg"
  PID[$name]=$LAST_PID
  wait_http "http://127.0.0.1:${FP_PORT[$name]}/u0/" 30
}

# measure NAME URL LUA FILE -> prints one CSV line:
# rps,p50,p99,errors,requests,proc_us_req,backend_us_req,machine_us_req,busy%,steal%,redis_all_req,redis_evalsha_req,load1
measure() {
  local name=$1 url=$2 lua=$3 f=$4 pid=${PID[$1]} r0 r1 c0 c1 p0 p1 b0 b1 w
  wrk -t"$THREADS" -c"$CONNS" -d"$WARMUP" -s "$lua" "$url" >/dev/null
  r0=$(store_calls "$name") c0=$(cpu_snap) p0=$(proc_ticks "$pid") b0=$(proc_ticks "$BACKEND_PID")
  wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency -s "$lua" "$url" >"$f"
  c1=$(cpu_snap) p1=$(proc_ticks "$pid") b1=$(proc_ticks "$BACKEND_PID") r1=$(store_calls "$name")
  w=$(parse_wrk "$f")
  awk -v w="$w" -v c0="$c0" -v c1="$c1" -v p="$((p1 - p0))" -v bt="$((b1 - b0))" -v r0="$r0" -v r1="$r1" -v hz="$HZ" \
    -v ld="$(cut -d' ' -f1 /proc/loadavg)" 'BEGIN {
      split(w, x, ","); reqs = x[5]; if (reqs < 1) reqs = 1
      split(c0, a, " "); split(c1, e, " "); d = e[1] - a[1]; if (d < 1) d = 1
      st = e[3] - a[3]; busy = d - (e[2] - a[2]) - st
      split(r0, q0, " "); split(r1, q1, " ")
      printf "%s,%.1f,%.1f,%.1f,%.1f,%.1f,%.5f,%.5f,%s\n", w, p / hz * 1e6 / reqs, bt / hz * 1e6 / reqs,
        busy / hz * 1e6 / reqs, 100 * busy / d, 100 * st / d, (q1[1] - q0[1]) / reqs, (q1[2] - q0[2]) / reqs, ld }'
}

summarize_load() { # from raw.csv
  awk -F, '
    function sortn(a, n,   i, j, t) { for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t } }
    function med(col, k,   a, i, n) { n = cnt[k]; for (i = 1; i <= n; i++) a[i] = v[col, k, i] + 0; sortn(a, n)
      return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
    function lo(col, k,   i, m) { m = v[col, k, 1] + 0; for (i = 2; i <= cnt[k]; i++) if (v[col, k, i] + 0 < m) m = v[col, k, i] + 0; return m }
    function hi(col, k,   i, m) { m = v[col, k, 1] + 0; for (i = 2; i <= cnt[k]; i++) if (v[col, k, i] + 0 > m) m = v[col, k, i] + 0; return m }
    function ratio(x, y) { return y > 0 ? sprintf("%.2f", x / y) : "-" }
    NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
    { k = $col["target"]; if (!(k in cnt)) tl[++nt] = k
      i = ++cnt[k]; for (c in col) v[c, k, i] = $col[c]; errs[k] += $col["errors"] }
    END {
      print "| target | req/s (median) | req/s min..max | p50 ms | p99 ms | proxy process CPU µs/req | backend CPU µs/req | machine CPU µs/req | added machine CPU µs/req vs direct | CPU busy % | steal % (max) | load1 (max) | store cmds/req (all) | store scripts/req | errors |"
      print "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
      for (t = 1; t <= nt; t++) { k = tl[t]
        added = ("direct" in cnt) ? sprintf("%.0f", med("machine_us_req", k) - med("machine_us_req", "direct")) : "-"
        pc = k == "direct" ? "-" : sprintf("%.1f", med("proc_us_req", k))
        rr = k ~ /redis|postgres/ ? sprintf("%.4f", med("redis_all_req", k)) : "-"
        re = k ~ /redis|postgres/ ? sprintf("%.4f", med("redis_evalsha_req", k)) : "-"
        printf "| %s | %.0f | %.0f..%.0f | %.3f | %.3f | %s | %.1f | %.1f | %s | %.0f | %.1f | %.2f | %s | %s | %d |\n", k, med("rps", k), lo("rps", k), hi("rps", k),
          med("p50_ms", k), med("p99_ms", k), pc, med("backend_us_req", k), med("machine_us_req", k), added, med("busy_pct", k),
          hi("steal_pct", k), hi("load1", k), rr, re, errs[k] }
      print ""
      if ("goproxy" in cnt) {
        print "| target | req/s ÷ goproxy | proxy CPU µs/req ÷ goproxy | p99 ÷ goproxy | req/s ÷ direct |"
        print "|---|---:|---:|---:|---:|"
        for (t = 1; t <= nt; t++) { k = tl[t]; if (k == "direct") continue
          printf "| %s | %s | %s | %s | %s |\n", k, ratio(med("rps", k), med("rps", "goproxy")),
            ratio(med("proc_us_req", k), med("proc_us_req", "goproxy")), ratio(med("p99_ms", k), med("p99_ms", "goproxy")),
            ("direct" in cnt) ? ratio(med("rps", k), med("rps", "direct")) : "-" }
      }
    }' "$1"
}

# ---- load mode ---------------------------------------------------------------------
run_load() {
  declare -gA PID=() URL=() N=() LUA=()
  setup_out load
  build
  start_backend
  PID[direct]=$BACKEND_PID URL[direct]=http://127.0.0.1:$BACKEND_PORT/
  local t names=()
  for t in $TARGETS; do
    case $t in
      direct) ;;
      goproxy)
        [[ -x $WORK/bin/goproxy ]] || { echo "skipping goproxy: $SHARED/goproxy not found" >&2; continue; }
        start goproxy "$WORK/bin/goproxy" -listen "127.0.0.1:$GOPROXY_PORT" -upstream "http://127.0.0.1:$BACKEND_PORT"
        PID[goproxy]=$LAST_PID URL[goproxy]=http://127.0.0.1:$GOPROXY_PORT/
        wait_http "${URL[goproxy]}" 10 ;;
      memory* | redis* | postgres* | nobreaker* | targets3* | eject* | accesslog* | retries* | keyed*)
        # KIND[:N][@VAR=value,VAR=value]: N upstreams instead of UPSTREAMS, requests spread
        # over all N (memory:10000); extra environment for the replica (memory@GOGC=400)
        local spec=${t%%@*} kind n envs=() store
        kind=${spec%%:*} n=$UPSTREAMS
        [[ $spec == *:* ]] && n=${spec#*:}
        [[ $t == *@* ]] && IFS=, read -r -a envs <<<"${t#*@}"
        local targets=one
        case $kind in
          memory) store=memory ;; redis) store=redis ;; postgres) store=postgres ;; nobreaker) store=none ;;
          targets3) store=memory targets=three ;; eject) store=memory targets=eject ;;
          redis-targets3) store=redis targets=three ;; redis-eject) store=redis targets=eject ;;
          retries) store=memory targets=retries ;; redis-retries) store=redis targets=retries ;;
          keyed) store=memory targets=keyed ;; redis-keyed) store=redis targets=keyed ;;
          accesslog) store=accesslog ;;
          *) echo "unknown target $t" >&2; exit 2 ;;
        esac
        [[ $n =~ ^[1-9][0-9]*$ ]] || { echo "target $t: upstream count $n is not a positive number" >&2; exit 2; }
        if [[ $store == postgres ]]; then
          [[ -n ${PG_PID:-} ]] || start_postgres
        fi
        if [[ $store == redis ]]; then
          [[ -n ${REDIS_PID:-} ]] || start_redis
          FP_REDIS=$t FP_REDIS_N=$n
        fi
        start_fp "$t" "$store" "$n" "$targets" "${envs[@]}"
        URL[$t]=http://127.0.0.1:${FP_PORT[$t]}/ N[$t]=$n ;;
      before)
        [[ -x ${FP_BEFORE_BIN:-} ]] || { echo "target before needs FP_BEFORE_BIN=/path/to/an/older/fuseproxy" >&2; exit 2; }
        start_fp before memory "$UPSTREAMS" one
        URL[before]=http://127.0.0.1:${FP_PORT[before]}/ ;;
      *) echo "unknown target $t" >&2; exit 2 ;;
    esac
    names+=("$t")
  done
  [[ -n ${REDIS_PID:-} ]] || start_redis # redis_calls needs a Redis to ask
  for t in "${names[@]}"; do # paths-N.lua sends request i to /u<i mod N>/
    LUA[$t]=$OUT/paths-${N[$t]:-$UPSTREAMS}.lua
    [[ -f ${LUA[$t]} ]] || write_lua "${LUA[$t]}" "${N[$t]:-$UPSTREAMS}"
  done
  env_info >"$OUT/env.txt"
  for t in "${names[@]}"; do echo "target $t: ${URL[$t]} pid ${PID[$t]}" >>"$OUT/env.txt"; done
  cat "$OUT/env.txt"

  local raw=$OUT/raw.csv r line
  echo "round,target,rps,p50_ms,p99_ms,errors,requests,proc_us_req,backend_us_req,machine_us_req,busy_pct,steal_pct,redis_all_req,redis_evalsha_req,load1" >"$raw"
  echo "== wrk -t$THREADS -c$CONNS -d$DURATION (+$WARMUP warm-up) -s paths-N.lua, $ROUNDS interleaved rounds over: ${names[*]}"
  local k n=${#names[@]}
  for ((r = 1; r <= ROUNDS; r++)); do
    # Round r starts at target r-1 (in turn): a target's place in a round biases it (the
    # same replica measured first and last in one run differed by 13 %), so each takes
    # every place as often.
    for ((k = 0; k < n; k++)); do
      t=${names[$(((r - 1 + k) % n))]}
      # raw.csv is comma-separated: memory@GOGC=200,GOMAXPROCS=1 is recorded as memory@GOGC=200+GOMAXPROCS=1
      line="$r,${t//,/+},$(measure "$t" "${URL[$t]}" "${LUA[$t]}" "$OUT/wrk/r$r-$t.txt")"
      echo "$line" >>"$raw"
      awk -F, '{ printf "  round %s %-10s %8.0f req/s  p50 %6.3f ms  p99 %6.3f ms  err %d  proxy %6.1f µs/req  backend %5.1f  machine %6.1f µs/req  busy %s%%  steal %s%%  load %s%s\n",
        $1, $2, $3, $4, $5, $6, $8, $9, $10, $11, $12, $15, ($2 ~ /redis|postgres/ ? sprintf("  store cmds/req %s (scripts %s)", $13, $14) : "") }' <<<"$line"
    done
  done
  echo "loadavg after: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/env.txt"

  local idle=""
  if [[ -n ${FP_REDIS:-} ]]; then
    sleep 1 # the last counts are flushed
    local i0 i1
    i0=$(redis_calls)
    redis-cli -p "$REDIS_PORT" info commandstats | tr -d '\r' >"$OUT/redis/idle-before.txt"
    sleep "$IDLE"
    i1=$(redis_calls)
    redis-cli -p "$REDIS_PORT" info commandstats | tr -d '\r' >"$OUT/redis/idle-after.txt"
    idle=$(awk -v a="$i0" -v b="$i1" -v s="$IDLE" -v n="$FP_REDIS_N" 'BEGIN { split(a, x, " "); split(b, y, " ")
      printf "Redis commands while idle (%d s, one replica, %d upstreams, all closed): %.2f commands/s per replica (%.4f per upstream), of which EVALSHA %.2f/s (%.4f per upstream).",
        s, n, (y[1] - x[1]) / s, (y[1] - x[1]) / s / n, (y[2] - x[2]) / s, (y[2] - x[2]) / s / n }')
    idle+=$'\n\nIdle commands by type (calls during the idle period):\n\n'
    idle+=$(awk -F'[:=,]' 'FNR == 1 { f++ } /^cmdstat_/ { if (f == 1) a[$1] = $3; else b[$1] = $3 }
             END { for (k in b) if (k != "cmdstat_info" && b[k] - a[k] > 0) printf "- %s: %d\n", substr(k, 9), b[k] - a[k] }' \
             "$OUT/redis/idle-before.txt" "$OUT/redis/idle-after.txt" | sort)
    redis-cli -p "$REDIS_PORT" info commandstats | tr -d '\r' >"$OUT/redis/commandstats-end.txt"
  fi

  {
    echo "## fuseproxy load run $STAMP"
    echo
    echo '```'
    cat "$OUT/env.txt"
    echo '```'
    echo
    echo "Per run: \`wrk -t$THREADS -c$CONNS -d$DURATION --latency -s paths-N.lua URL\` after a $WARMUP warm-up; paths-N.lua sends request i to"
    echo "/u<i mod N>/, N the target's number of upstreams ($UPSTREAMS unless the target says KIND:N)."
    echo "Medians over $ROUNDS interleaved rounds. \"proxy process CPU\" = utime+stime of the proxy process / requests; \"machine CPU\" = busy"
    echo "ticks of the whole machine (wrk, backend, proxy and anything else running; steal excluded) / requests. store cmds/req counts, for a"
    echo "redis target, every command in INFO commandstats (including those run inside Lua scripts), INFO itself excluded; for a postgres"
    echo "target, every top-level statement in pg_stat_statements (the measurement's own excluded), scripts/req those that SELECT a function."
    echo
    summarize_load "$raw"
    echo
    [[ -n $idle ]] && echo "$idle"
  } >"$OUT/summary.md"
  echo
  cat "$OUT/summary.md"
  echo
  echo "saved in $OUT/"
}

# ---- scale mode: RSS with 10,000 upstreams -----------------------------------------------
run_scale() {
  declare -gA PID=()
  setup_out scale
  build
  start_backend
  start_redis
  env_info >"$OUT/env.txt"
  echo "scale: SCALE_UPSTREAMS=$SCALE_UPSTREAMS SCALE_HOT=$SCALE_HOT SCALE_DURATION=$SCALE_DURATION" >>"$OUT/env.txt"
  cat "$OUT/env.txt"
  local lua=$OUT/hot.lua rows=() t name store envs t0 started rss0 idle_cmds c0 c1 p0 p1 r0 r1 w
  write_lua "$lua" "$SCALE_HOT"
  for t in ${SCALE_TARGETS:-memory redis memory@GOGC=400}; do
    name=scale-$t envs=()
    [[ $t == *@* ]] && IFS=, read -r -a envs <<<"${t#*@}"
    store=memory
    [[ ${t%%@*} == redis ]] && store=redis
    if [[ ${t%%@*} == postgres ]]; then
      store=postgres
      [[ -n ${PG_PID:-} ]] || start_postgres
    fi
    t0=$SECONDS
    start_fp "$name" "$store" "$SCALE_UPSTREAMS" one "${envs[@]}"
    started=$((SECONDS - t0))
    sleep 3 # settle: the redis replica's first resync reads every circuit
    rss0=$(rss_kib "${PID[$name]}")
    r0=$(store_calls "$name")
    sleep "$IDLE"
    r1=$(store_calls "$name")
    idle_cmds=$(awk -v a="$r0" -v b="$r1" -v s="$IDLE" 'BEGIN { split(a, x, " "); split(b, y, " "); printf "%.1f", (y[1] - x[1]) / s }')
    c0=$(cpu_snap) p0=$(proc_ticks "${PID[$name]}") r0=$(store_calls "$name")
    wrk -t"$THREADS" -c"$CONNS" -d"$SCALE_DURATION" --latency -s "$lua" "http://127.0.0.1:${FP_PORT[$name]}/" >"$OUT/wrk/$name.txt"
    c1=$(cpu_snap) p1=$(proc_ticks "${PID[$name]}") r1=$(store_calls "$name")
    w=$(parse_wrk "$OUT/wrk/$name.txt")
    rows+=("$(awk -v name="$name" -v w="$w" -v rss0="$rss0" -v rss1="$(rss_kib "${PID[$name]}")" -v hwm="$(hwm_kib "${PID[$name]}")" \
      -v p="$((p1 - p0))" -v hz="$HZ" -v c0="$c0" -v c1="$c1" -v r0="$r0" -v r1="$r1" -v idle="$idle_cmds" -v n="$SCALE_UPSTREAMS" \
      -v started="$started" -v redis="$store" -v ld="$(cut -d' ' -f1 /proc/loadavg)" 'BEGIN {
        split(w, x, ","); reqs = x[5]; if (reqs < 1) reqs = 1
        split(c0, a, " "); split(c1, e, " "); d = e[1] - a[1]; if (d < 1) d = 1; st = e[3] - a[3]
        split(r0, q0, " "); split(r1, q1, " ")
        printf "| %s | %d | %d s | %.1f | %.0f | %.0f | %.1f | %.1f | %.3f | %.3f | %.1f | %s | %s | %.1f | %s | %d |", name, n, started,
          rss0 / 1024, rss0 * 1024 / n, x[1], rss1 / 1024, hwm / 1024, x[2], x[3], p / hz * 1e6 / reqs,
          (redis != "memory" ? sprintf("%.4f", (q1[1] - q0[1]) / reqs) : "-"), (redis != "memory" ? idle : "-"), 100 * st / d, ld, x[4] }')")
    kill -TERM "${PID[$name]}"
    wait "${PID[$name]}" 2>/dev/null || true
  done
  {
    echo "## fuseproxy with $SCALE_UPSTREAMS upstreams, $STAMP"
    echo
    echo '```'
    cat "$OUT/env.txt"
    echo '```'
    echo
    echo "Each replica has $SCALE_UPSTREAMS upstreams (breakers enabled, all closed; all target the bench backend, so they share one transport and pool)"
    echo "and $((2 * SCALE_UPSTREAMS + 1)) routes. Load: \`wrk -t$THREADS -c$CONNS -d$SCALE_DURATION --latency -s hot.lua\`, request i to"
    echo "/u<i mod $SCALE_HOT>/. RSS idle is read $((3 + IDLE)) s after start; store cmds/s idle over $IDLE s (Redis: all commands, INFO excluded; postgres: top-level statements)."
    echo
    echo "| replica | upstreams | startup | RSS idle MiB | RSS idle bytes/upstream | req/s | RSS after load MiB | VmHWM MiB | p50 ms | p99 ms | proxy CPU µs/req | store cmds/req | store cmds/s idle | steal % | load1 | errors |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    printf '%s\n' "${rows[@]}"
  } >"$OUT/summary.md"
  echo
  cat "$OUT/summary.md"
  echo "saved in $OUT/"
}

# ---- shared mode: the shared harness with fuseproxy as extra targets ------------------------
run_shared() {
  [[ -x $SHARED/run.sh ]] || { echo "no $SHARED/run.sh" >&2; exit 1; }
  mkdir -p "$WORK/shared-cfg"
  build
  local names=() cfgs=() args=() port=18090 t store
  for t in ${FP_TARGETS:-memory redis nobreaker}; do
    case $t in memory) store=memory ;; redis) store=redis ;; nobreaker) store=none ;; *) echo "unknown FP_TARGETS entry $t" >&2; exit 2 ;; esac
    gen_config "$WORK/shared-cfg/$t.yaml" "fp-$t" "$store" "$UPSTREAMS" http://127.0.0.1:18080 "127.0.0.1:$port" \
      "127.0.0.1:$((port + 100))" redis://127.0.0.1:18379/0
    cfgs+=("$WORK/shared-cfg/$t.yaml")
    args+=("fp-$t=http://127.0.0.1:$port/")
    port=$((port + 1))
  done
  echo "== $SHARED/run.sh ${args[*]}"
  CONNS=${CONNS:-32} TARGETS=${SHARED_TARGETS:-"direct goproxy nginx haproxy caddy caddy-ka"} \
    EXTRA_START="$ROOT/bench/run.sh _extra $WORK/bin/fuseproxy ${cfgs[*]}" BENCH_WORK=$WORK/shared "$SHARED/run.sh" "${args[@]}"
}

# ---- tls mode: HTTP/2 over TLS, fuseproxy against nginx and Caddy ------------------------
run_tls() {
  local t cmd
  for cmd in nginx caddy h2load openssl; do
    command -v $cmd >/dev/null || { echo "missing $cmd (apt-get install -y nginx caddy nghttp2-client openssl)" >&2; exit 1; }
  done
  declare -gA PID=() URL=()
  setup_out tls
  build
  start_backend
  local streams=${STREAMS:-10} tdir=$OUT/tls names=()
  mkdir -p "$tdir/nginx" "$tdir/caddy"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=bench.test \
    -addext 'subjectAltName=DNS:bench.test,IP:127.0.0.1' -keyout "$tdir/key.pem" -out "$tdir/cert.pem" 2>/dev/null
  local port=$((PORT_BASE + 60))
  for t in ${TLS_TARGETS:-fuseproxy nginx caddy caddy-ka}; do
    port_free "$port" || { echo "port $port in use (set PORT_BASE)" >&2; exit 1; }
    case $t in
      fuseproxy)
        cat >"$OUT/cfg/tls-fuseproxy.yaml" <<EOF
listen: "127.0.0.1:$port"
admin: {listen: "127.0.0.1:$((port + 50))"}
log: {level: warn}
server:
  tls:
    certificates: [{cert_file: "$tdir/cert.pem", key_file: "$tdir/key.pem"}]
upstreams:
  u0:
    targets: ["http://127.0.0.1:$BACKEND_PORT"]
routes:
  - {path_prefix: /, upstream: u0}
EOF
        # shellcheck disable=SC2086 # FP_ENV is a list of VAR=value words
        start tls-fuseproxy env $FP_ENV "$WORK/bin/fuseproxy" serve -config "$OUT/cfg/tls-fuseproxy.yaml"
        PID[$t]=$LAST_PID
        ;;
      nginx)
        cat >"$tdir/nginx/nginx.conf" <<EOF
worker_processes auto;
pid nginx.pid;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path client_body;
    proxy_temp_path proxy;
    fastcgi_temp_path fastcgi;
    uwsgi_temp_path uwsgi;
    scgi_temp_path scgi;
    keepalive_requests 1000000;
    http2_max_requests 1000000;
    upstream backend {
        server 127.0.0.1:$BACKEND_PORT;
        keepalive 256;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$port ssl http2 backlog=4096;
        ssl_certificate $tdir/cert.pem;
        ssl_certificate_key $tdir/key.pem;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
        }
    }
}
EOF
        start tls-nginx nginx -p "$tdir/nginx/" -c "$tdir/nginx/nginx.conf" -e "$tdir/nginx/error.log" -g 'daemon off;'
        PID[$t]=$LAST_PID
        ;;
      caddy | caddy-ka)
        # caddy-ka: a larger idle pool to the backend (Caddy keeps 32 idle connections per
        # host by default; more streams than that in flight reconnect to the backend).
        local transport=""
        [[ $t == caddy-ka ]] && transport="{
        transport http {
            keepalive_idle_conns_per_host 1024
        }
    }"
        mkdir -p "$tdir/$t"
        cat >"$tdir/$t/Caddyfile" <<EOF
{
    admin off
    auto_https off
}
https://127.0.0.1:$port {
    bind 127.0.0.1
    tls $tdir/cert.pem $tdir/key.pem
    reverse_proxy 127.0.0.1:$BACKEND_PORT $transport
}
EOF
        start "tls-$t" env XDG_CONFIG_HOME="$tdir/$t" XDG_DATA_HOME="$tdir/$t" caddy run --adapter caddyfile --config "$tdir/$t/Caddyfile"
        PID[$t]=$LAST_PID
        ;;
      *) echo "unknown TLS_TARGETS entry $t (fuseproxy nginx caddy caddy-ka)" >&2; exit 2 ;;
    esac
    URL[$t]=https://127.0.0.1:$port/
    names+=("$t")
    local ok=0
    for _ in $(seq 100); do
      [[ $(curl -sk -o /dev/null -w '%{http_code}' --http2 "${URL[$t]}" 2>/dev/null) == 200 ]] && { ok=1; break; }
      sleep 0.1
    done
    ((ok)) || { echo "$t: no 200 from ${URL[$t]}" >&2; exit 1; }
    port=$((port + 1))
  done
  env_info >"$OUT/env.txt"
  { echo "nginx: $(nginx -v 2>&1 | cut -d/ -f2)"; echo "caddy: $(caddy version | cut -d' ' -f1)"; echo "h2load: $(h2load --version | head -1)"; } >>"$OUT/env.txt"
  echo "target,round,rps,mean_ms,failed,requests,proc_us_req,backend_us_req,machine_us_req,steal_pct,proto" >"$OUT/raw.csv"
  local r f c0 c1 p0 p1 b0 b1 w proto
  for ((r = 1; r <= ROUNDS; r++)); do
    for t in "${names[@]}"; do
      f=$OUT/wrk/$t-$r.txt
      h2load -c"$CONNS" -m"$streams" -t"$THREADS" -D"${WARMUP%s}" "${URL[$t]}" >/dev/null 2>&1
      c0=$(cpu_snap) p0=$(tree_ticks "${PID[$t]}") b0=$(proc_ticks "$BACKEND_PID")
      h2load -c"$CONNS" -m"$streams" -t"$THREADS" -D"${DURATION%s}" "${URL[$t]}" >"$f" 2>&1
      c1=$(cpu_snap) p1=$(tree_ticks "${PID[$t]}") b1=$(proc_ticks "$BACKEND_PID")
      proto=$(awk '/^Application protocol:/ { print $3 }' "$f")
      w=$(awk '/^finished in/ { gsub(",", ""); rps = $4 } /^requests:/ { reqs = $2; failed = $10 + $12 }
               /^time for request:/ { v = $6; u = v; sub(/[0-9.]+/, "", u); mean = v + 0; if (u == "us") mean /= 1000; if (u == "s") mean *= 1000 }
               END { printf "%.2f,%.3f,%d,%d", rps, mean, failed, reqs }' "$f")
      awk -v t="$t" -v r="$r" -v w="$w" -v c0="$c0" -v c1="$c1" -v p="$((p1 - p0))" -v bt="$((b1 - b0))" -v hz="$HZ" -v proto="$proto" 'BEGIN {
        split(w, x, ","); reqs = x[4]; if (reqs < 1) reqs = 1
        split(c0, a, " "); split(c1, e, " "); d = e[1] - a[1]; if (d < 1) d = 1; st = e[3] - a[3]; busy = d - (e[2] - a[2]) - st
        printf "%s,%d,%s,%.1f,%.1f,%.1f,%.1f,%s\n", t, r, w, p / hz * 1e6 / reqs, bt / hz * 1e6 / reqs, busy / hz * 1e6 / reqs, 100 * st / d, proto }' >>"$OUT/raw.csv"
      tail -1 "$OUT/raw.csv"
    done
  done
  {
    echo "## HTTP/2 over TLS: fuseproxy, nginx and Caddy, $STAMP"
    echo
    echo '```'
    cat "$OUT/env.txt"
    echo '```'
    echo
    echo "Load: \`h2load -c$CONNS -m$streams -t$THREADS -D${DURATION%s}\` per target and round (after a ${WARMUP} warm-up), $ROUNDS interleaved rounds; medians."
    echo
    echo "| target | protocol | req/s (median) | req/s min..max | mean latency ms | proxy CPU µs/req | backend CPU µs/req | machine CPU µs/req | proxy CPU ÷ nginx | steal % (max) | failed |"
    echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    awk -F, 'function sortn(a, n,   i, j, t) { for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t } }
      function med(c, k,   a, i, n) { n = cnt[k]; for (i = 1; i <= n; i++) a[i] = v[c, k, i] + 0; sortn(a, n); return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
      function lo(c, k,   i, m) { m = v[c, k, 1] + 0; for (i = 2; i <= cnt[k]; i++) if (v[c, k, i] + 0 < m) m = v[c, k, i] + 0; return m }
      function hi(c, k,   i, m) { m = v[c, k, 1] + 0; for (i = 2; i <= cnt[k]; i++) if (v[c, k, i] + 0 > m) m = v[c, k, i] + 0; return m }
      NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
      { k = $1; if (!(k in cnt)) tl[++nt] = k; i = ++cnt[k]; for (c in col) v[c, k, i] = $col[c]; failed[k] += $col["failed"]; proto[k] = $col["proto"] }
      END { for (t = 1; t <= nt; t++) { k = tl[t]
        ratio = ("nginx" in cnt) ? sprintf("%.2f", med("proc_us_req", k) / med("proc_us_req", "nginx")) : "-"
        printf "| %s | %s | %.0f | %.0f..%.0f | %.3f | %.1f | %.1f | %.1f | %s | %.1f | %d |\n", k, proto[k], med("rps", k), lo("rps", k), hi("rps", k),
          med("mean_ms", k), med("proc_us_req", k), med("backend_us_req", k), med("machine_us_req", k), ratio, hi("steal_pct", k), failed[k] } }' "$OUT/raw.csv"
  } >"$OUT/summary.md"
  echo
  cat "$OUT/summary.md"
  echo "saved in $OUT/"
}

# utime+stime ticks of a process and its children (nginx's workers).
tree_ticks() {
  local sum=0 pid
  for pid in $1 $(pgrep -P "$1"); do
    [[ -r /proc/$pid/stat ]] && sum=$((sum + $(proc_ticks "$pid")))
  done
  echo "$sum"
}

# ---- go mode: the Go benchmarks ---------------------------------------------------------
run_go() {
  setup_out go
  env_info >"$OUT/env.txt"
  local count=${COUNT:-6}
  (cd "$ROOT" && go test -run '^$' -bench 'BenchmarkAllowDone|BenchmarkRejectOpen' -benchmem -count "$count" ./breaker/) | tee "$OUT/breaker.txt"
  (cd "$ROOT" && go test -run '^$' -bench 'BenchmarkHandler|BenchmarkLookupAdmit' -benchmem -count "$count" ./proxy/) | tee "$OUT/proxy.txt"
  (cd "$ROOT" && go test -run '^$' -bench 'BenchmarkRequest|BenchmarkScrape' -benchmem -count "$count" ./internal/telemetry/) | tee "$OUT/telemetry.txt"
  (cd "$ROOT" && go test -run '^$' -bench 'BenchmarkUpstreamMemory' -benchtime 1x -count 1 ./internal/app/) | tee "$OUT/memory.txt"
  (cd "$ROOT" && go test -run '^$' -bench 'BenchmarkRedisIdleFlush' -benchmem -count "$count" ./store/) | tee "$OUT/store.txt"
  echo "loadavg after: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/env.txt"
  echo "saved in $OUT/"
}

case $MODE in
  load) run_load ;;
  scale) run_scale ;;
  shared) run_shared ;;
  tls) run_tls ;;
  go) run_go ;;
  *) echo "unknown mode $MODE (load, scale, shared, tls, go; --help)" >&2; exit 2 ;;
esac
