#!/usr/bin/env bash
# The gateway's own instructions per request, counted by callgrind (repeatable to within a
# few per cent whatever else the machine does, where req/s here drift by 15-20 %).
#
#   queue-gateway/benches/request_cost.sh [GATEWAY_BIN...]
#
# For each build (default: this checkout's release build), one serving thread under
# `valgrind --tool=callgrind`: after a 3 s warm-up the counters are zeroed, wrk runs 10 s,
# and the instructions the whole process ran are divided by the requests wrk completed.
# Three lines per build:
#   forward   admitted requests (token + ticket cookie) forwarded to nginx serving a static file
#   status    status polls cycling through 2,000 waiting tickets, memory store
#   status-r  the same polls, Redis store (the gateway's side only: Redis runs outside callgrind)
#   join-r    new tickets (POST joins, a new anonymous owner each), Redis store
# MODES="status-r join-r" picks some of them.
# Needs valgrind, nginx, wrk, redis-server, curl, python3. KEEP=DIR keeps the callgrind
# dumps there (for callgrind_annotate). A file BIN.toml beside a build gives that build
# top-level config lines of its own (an older build's `demo_room = false`, say).
# SYSCALLS=1: the same runs without valgrind, counting the gateway's system calls per request
# with `perf stat` on the syscall tracepoints instead (needs perf), reads that found nothing
# (EAGAIN) among them. Not strace: it slows the gateway so much that the next request is
# always there when it reads, which hid one empty read per request (BENCHMARKS.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ $# -eq 0 ]; then
  cargo build --release -q -p queue-gateway
  set -- ./target/release/queue-gateway
fi
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
source queue-gateway/benches/common.sh
# One serving thread, so callgrind sees every request's work on one thread.
printf '[limits]\nworkers = 1\n' >> "$WORK/gw.toml"
wait_port() { for _ in $(seq 300); do (echo > /dev/tcp/127.0.0.1/"$1") 2>/dev/null && return; sleep 0.2; done; echo "port $1 never opened" >&2; exit 1; }

UP=$(free_port); REDIS=$(free_port)
mkdir -p "$WORK/www/book" "$WORK/tmp"
chmod 755 "$WORK"
printf '%s' '{"ok":true,"page":"booking","seats":[1,2,3,4,5,6,7,8]}' > "$WORK/www/book/seat"
chmod -R a+rX "$WORK/www"
cat > "$WORK/nginx.conf" <<CONF
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/nginx.err warn;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  client_body_temp_path $WORK/tmp; proxy_temp_path $WORK/tmp; fastcgi_temp_path $WORK/tmp;
  uwsgi_temp_path $WORK/tmp; scgi_temp_path $WORK/tmp;
  server { listen 127.0.0.1:$UP; root $WORK/www; default_type application/json; } }
CONF
nginx -c "$WORK/nginx.conf" -g 'daemon off;' & PIDS+=($!)
redis-server --port "$REDIS" --save '' --appendonly no --logfile "$WORK/redis.log" & PIDS+=($!)
wait_port "$UP"; wait_port "$REDIS"

# measure NAME BIN MODE: one gateway under callgrind, one workload.
measure() {
  local name=$1 bin=$2 mode=$3 port out n ir vp dump
  dump="$WORK/cg.$(echo "$name" | tr -c 'A-Za-z0-9.\n-' _).$mode"
  port=$(free_port)
  local cfg=$WORK/gw.toml
  if [ -f "$bin.toml" ]; then cfg=$WORK/gw.$(basename "$bin").toml; cat "$bin.toml" "$WORK/gw.toml" > "$cfg"; fi
  local env=(WR_LISTEN=127.0.0.1:$port WR_UPSTREAM=http://127.0.0.1:$UP WR_ADMIN_TOKEN=$ADMIN WR_CONFIG=$cfg RUST_LOG=warn)
  [[ $mode == *-r ]] && env+=(WR_REDIS_URL=redis://127.0.0.1:$REDIS)
  if [ -n "${SYSCALLS:-}" ]; then
    env "${env[@]}" "$bin" > "$WORK/gw.log" 2>&1 &
  else
    env "${env[@]}" valgrind --tool=callgrind --callgrind-out-file="$dump" "$bin" > "$WORK/gw.log" 2>&1 &
  fi
  vp=$!
  wait_port "$port"
  local args=()
  if [ "$mode" = forward ]; then
    args=(-c8 -H "cookie: $(admitted_cookie "$port")" "http://127.0.0.1:$port/book/seat")
  elif [ "$mode" = join-r ]; then
    redis-cli -p "$REDIS" flushall > /dev/null
    room "$port" poll /poll/
    printf 'wrk.method = "POST"\n' > "$WORK/join.lua"
    args=(-c16 -s "$WORK/join.lua" "http://127.0.0.1:$port/api/v1/rooms/poll/tickets")
  else
    [ "$mode" = status-r ] && redis-cli -p "$REDIS" flushall > /dev/null
    poll_room "$port" "$WORK/polls.lua"
    args=(-c16 -s "$WORK/polls.lua" "http://127.0.0.1:$port/")
  fi
  export POLL_PREFIX=/api/v1/rooms/poll/tickets/
  wrk -t1 -d3s "${args[@]}" > /dev/null
  if [ -n "${SYSCALLS:-}" ]; then
    perf stat -x, -o "$dump.perf" "${SYSCALL_EVENTS[@]}" -p "$vp" & local sp=$!
    sleep 0.5
    out=$(wrk -t1 -d10s "${args[@]}")
    kill -INT "$sp"; wait "$sp" 2>/dev/null || true
    kill "$vp"; wait "$vp" 2>/dev/null || true
    n=$(echo "$out" | awk '/requests in/ {print $1}')
    printf '%-9s %-40s %s(%d requests)\n' "$mode" "$name" "$(awk -F, -v n="$n" \
      '$3 ~ /syscalls:/ && $1 / n >= 0.005 {
        c = $3; sub(/^(raw_)?syscalls:sys_(enter|exit)_?/, "", c); if ($3 ~ /sys_exit_/) c = c " empty"
        if (c == "") c = "all"
        printf "%s %.2f  ", c, $1 / n }' "$dump.perf")" "$n"
    rm -f "$dump"*
    return
  fi
  callgrind_control -z "$vp" > /dev/null 2>&1
  out=$(wrk -t1 -d10s "${args[@]}")
  callgrind_control -d "$vp" > /dev/null 2>&1
  kill "$vp"; wait "$vp" 2>/dev/null || true
  n=$(echo "$out" | awk '/requests in/ {print $1}')
  # The -d dump is part 1; the one written at exit covers only the time since.
  ir=$(callgrind_annotate "$dump.1" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",","",$1); print $1}')
  printf '%-9s %-40s %7d instructions/request (%d requests%s)\n' "$mode" "$name" $((ir / n)) "$n" \
    "$(echo "$out" | awk '/Non-2xx/ {print ", non-2xx: " $4}')"
  if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP"; cp "$dump.1" "$KEEP/$(basename "$dump").out"; fi
  rm -f "$dump"*
}

tool="callgrind"; [ -n "${SYSCALLS:-}" ] && tool="perf stat, system calls per request"
echo "# $(date -u +%FT%TZ) $tool, one serving thread"
for bin in "$@"; do
  name=$(basename "$(dirname "$bin")")/$(basename "$bin")
  for mode in ${MODES:-forward status status-r join-r}; do measure "$name" "$bin" "$mode"; done
done
