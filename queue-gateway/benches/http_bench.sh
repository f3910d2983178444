#!/usr/bin/env bash
# HTTP benchmarks of the gateway next to nginx, in one run, same wrk settings.
#
#   queue-gateway/benches/http_bench.sh [DURATION=10s] [CONNECTIONS=50]
#
# Needs nginx, wrk, redis-server, curl (Debian: nginx-light wrk redis-server curl).
# 1. Admitted forwarding: the gateway (valid admission token and ticket cookie on every
#    request) vs nginx proxy_pass, both sent the same request (cookies included) and both in
#    front of the same upstream: an nginx of its own serving a static 200.
# 2. Status polls with the Redis store (2,000 tickets, each request the next one) vs nginx
#    serving a static 200 of the same size through the same wrk script; then the same polls
#    with the memory store.
# 3. Joins/s with the Redis store (every request a new anonymous ticket).
# 4. The HTTP layer alone: the gateway's /healthz vs nginx's static file.
# Gateway lines end with the CPU (user + system, from /proc) the gateway, and for Redis-backed
# lines Redis, spent per request during the run.
# GATEWAY_BIN=path runs another build of the gateway (an A/B of two builds) instead of
# building this checkout's. FAST_LANE=false runs the gateways with every connection through
# hyper (WR_FAST_LANE; a build that predates the setting ignores it).
# SYSCALLS=1 (needs perf) also counts, with `perf stat` on the syscall tracepoints, the
# system calls per request of the forwarding proxies, the status polls and the joins, and
# the reads among them (recvfrom or read) that found nothing (EAGAIN). Off by default: counting costs each
# system call a little, and nginx makes more of them.
set -euo pipefail
cd "$(dirname "$0")/../.."
DUR=${1:-10s}
CONN=${2:-50}
THREADS=2
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

source queue-gateway/benches/common.sh
UP=$(free_port); PROXY=$(free_port); STATIC=$(free_port); GW=$(free_port); GWR=$(free_port); REDIS=$(free_port)

if [ -z "${GATEWAY_BIN:-}" ]; then
  cargo build --release -q -p queue-gateway
  GATEWAY_BIN=./target/release/queue-gateway
fi

mkdir -p "$WORK/logs"
start_nginx $UP $PROXY "server { listen 127.0.0.1:$STATIC; root $WORK/www; default_type application/json; }"
redis-server --port "$REDIS" --save '' --appendonly no --daemonize no --logfile "$WORK/logs/redis.log" & PIDS+=($!); REDIS_PID=$!
export WR_FAST_LANE=${FAST_LANE:-true}
WR_LISTEN=127.0.0.1:$GW WR_UPSTREAM=http://127.0.0.1:$UP WR_ADMIN_TOKEN=$ADMIN WR_CONFIG=$WORK/gw.toml RUST_LOG=warn \
  "$GATEWAY_BIN" > "$WORK/logs/gw.log" 2>&1 & PIDS+=($!); GW_PID=$!
WR_LISTEN=127.0.0.1:$GWR WR_UPSTREAM=http://127.0.0.1:$UP WR_ADMIN_TOKEN=$ADMIN WR_CONFIG=$WORK/gw.toml \
  WR_REDIS_URL=redis://127.0.0.1:$REDIS RUST_LOG=warn "$GATEWAY_BIN" > "$WORK/logs/gwr.log" 2>&1 & PIDS+=($!); GWR_PID=$!
wait_ports $UP $PROXY $STATIC $GW $GWR $REDIS
sleep 0.5

rps() { awk '/Requests\/sec/ {print $2}'; }
p99() { awk '/ 99%/ {print $2}'; }
bench() { wrk -t$THREADS -c"$CONN" -d"$DUR" --latency "$@"; }
TCK=$(getconf CLK_TCK)
# ticks PIDS: user and system clock ticks of the processes in PIDS (comma-separated), summed.
ticks() { for p in ${1//,/ }; do cat "/proc/$p/stat"; done | awk '{u += $14; s += $15} END {print u, s}'; }
# switches PIDS: context switches (voluntary and not) of all their threads, summed.
switches() { for p in ${1//,/ }; do cat /proc/"$p"/task/*/status; done | awk '/ctxt_switches/ {n += $2} END {print n}'; }
# measured PIDS... -- wrk args: runs bench, then prints a line "cpu_us_per_req TOTAL USER
# SYSTEM SWITCHES" for each PIDS (a process, or comma-separated processes counted together)
# after wrk's output; SWITCHES is context switches per request.
measured() {
  local pids=() before=() perfs=() out
  while [ "$1" != "--" ]; do pids+=("$1"); shift; done; shift
  for p in "${pids[@]}"; do before+=("$(ticks "$p") $(switches "$p")"); done
  if [ -n "${SYSCALLS:-}" ]; then
    for i in "${!pids[@]}"; do
      perf stat -x, -o "$WORK/perf.$i" "${SYSCALL_EVENTS[@]}" -p "${pids[$i]}" & perfs+=($!)
    done
    sleep 0.3
  fi
  out=$(bench "$@")
  for p in "${perfs[@]}"; do kill -INT "$p"; wait "$p" 2>/dev/null || true; done
  echo "$out"
  local total; total=$(echo "$out" | awk '/requests in/ {print $1}')
  for i in "${!pids[@]}"; do
    [ -n "${SYSCALLS:-}" ] && echo "syscalls_per_req $(awk -F, -v n="$total" '
      /raw_syscalls/ {a = $1 / n} /sys_exit_(recvfrom|read)/ {e += $1 / n} END {printf "%.2f %.2f", a, e}' "$WORK/perf.$i")"
    echo "cpu_us_per_req $(python3 -c "
u0, s0, c0 = map(int, '${before[$i]}'.split()); u1, s1, c1 = map(int, '$(ticks "${pids[$i]}") $(switches "${pids[$i]}")'.split())
f = 1e6 / $TCK / $total
print(round((u1 - u0 + s1 - s0) * f, 1), round((u1 - u0) * f, 1), round((s1 - s0) * f, 1), round((c1 - c0) / $total, 2))")"
  done
}
# cpu OUTPUT [N]: the Nth measured process's CPU µs per request; cpu_split: "user U, system S".
cpu() { echo "$1" | awk '/^cpu_us_per_req/ {print $2}' | sed -n "${2:-1}p"; }
cpu_split() { echo "$1" | awk '/^cpu_us_per_req/ {print "user " $3 ", system " $4}' | sed -n "${2:-1}p"; }
switches_per_req() { echo "$1" | awk '/^cpu_us_per_req/ {print $5}' | sed -n "${2:-1}p"; }
# syscalls OUTPUT [N]: "S (E empty reads)" per request of the Nth measured process (SYSCALLS=1).
syscalls() { echo "$1" | awk '/^syscalls_per_req/ {print $2 " (" $3 " empty reads)"}' | sed -n "${2:-1}p"; }

echo "# $(date -u +%FT%TZ) wrk -t$THREADS -c$CONN -d$DUR on $(nproc) cores"

# 1. Admitted forwarding.
COOKIE=$(admitted_cookie $GW)
curl -s -H "cookie: $COOKIE" "http://127.0.0.1:$GW/book/seat" | grep -q booking || { echo "gateway refused the admitted request: $(curl -s -H "cookie: $COOKIE" "http://127.0.0.1:$GW/book/seat") cookie=$COOKIE"; exit 1; }
NGINX_WORKERS=$(pgrep -P "$NGINX_PID" | paste -sd,); UPSTREAM_WORKERS=$(pgrep -P "$UPSTREAM_PID" | paste -sd,)
# Both get the same request, cookies included (nginx passes them on to the upstream too).
N=$(measured "$NGINX_WORKERS" "$UPSTREAM_WORKERS" -- -H "cookie: $COOKIE" "http://127.0.0.1:$PROXY/book/seat"); N_RPS=$(echo "$N" | rps); N_P99=$(echo "$N" | p99)
G=$(measured "$GW_PID" "$UPSTREAM_WORKERS" -- -H "cookie: $COOKIE" "http://127.0.0.1:$GW/book/seat"); G_RPS=$(echo "$G" | rps); G_P99=$(echo "$G" | p99)
NON2XX=$(echo "$G" | awk '/Non-2xx/ {print $4}')
echo "forward  nginx proxy_pass: ${N_RPS} req/s p99 ${N_P99} | gateway (admitted): ${G_RPS} req/s p99 ${G_P99} | ratio $(python3 -c "print(round($G_RPS/$N_RPS,2))") ${NON2XX:+(non-2xx: $NON2XX)} | gateway CPU $(cpu "$G") µs/req"
echo "forward  CPU µs/req: nginx proxy workers $(cpu "$N") ($(cpu_split "$N")) | gateway $(cpu "$G") ($(cpu_split "$G")) | upstream behind nginx $(cpu "$N" 2), behind the gateway $(cpu "$G" 2)"
echo "forward  context switches per request: nginx proxy workers $(switches_per_req "$N"), gateway $(switches_per_req "$G") | upstream behind nginx $(switches_per_req "$N" 2), behind the gateway $(switches_per_req "$G" 2)"
[ -n "${SYSCALLS:-}" ] && echo "forward  system calls per request: nginx proxy workers $(syscalls "$N"), gateway $(syscalls "$G")"

# 2. Status polls with the Redis store vs a static 200 of the same size: 2,000 waiting tickets,
# each request the next ticket with its own cookie (a crowd polling, not one client hammering
# one ticket); nginx gets the same script, the ticket in its query string.
poll_room $GWR "$WORK/polls.lua"
T2=$(sed -n 2p "$WORK/polls.lua" | grep -o '[0-9a-f]\{32\}' | head -1)
COOKIE2=$(sed -n 2p "$WORK/polls.lua" | grep -o 'wr_poll=[^"]*')
BODY=$(curl -sf -H "cookie: $COOKIE2" "http://127.0.0.1:$GWR/api/v1/rooms/poll/tickets/$T2")
printf '%s' "$BODY" > "$WORK/www/status.json"; chmod a+r "$WORK/www/status.json"
S=$(POLL_PREFIX="/status.json?t=" measured "$NGINX_WORKERS" -- -s "$WORK/polls.lua" "http://127.0.0.1:$STATIC/"); S_RPS=$(echo "$S" | rps); S_P99=$(echo "$S" | p99)
redis-cli -p "$REDIS" config resetstat > /dev/null
P=$(POLL_PREFIX="/api/v1/rooms/poll/tickets/" measured "$GWR_PID" "$REDIS_PID" -- -s "$WORK/polls.lua" "http://127.0.0.1:$GWR/"); P_RPS=$(echo "$P" | rps); P_P99=$(echo "$P" | p99)
NON2XX=$(echo "$P" | awk '/Non-2xx/ {print $4}')
echo "status   nginx static ${#BODY} B: ${S_RPS} req/s p99 ${S_P99} | gateway status (Redis, 2,000 tickets): ${P_RPS} req/s p99 ${P_P99} | ratio $(python3 -c "print(round($P_RPS/$S_RPS,2))") ${NON2XX:+(non-2xx: $NON2XX)} | CPU µs/req gateway $(cpu "$P") Redis $(cpu "$P" 2)"
# What Redis ran for them (resetstat just before): calls per poll, µs per call.
echo "status   Redis commands per poll: $(redis-cli -p "$REDIS" info commandstats | python3 -c "
import re, sys
rows = [re.match(r'cmdstat_(\w+):calls=(\d+),usec=\d+,usec_per_call=([\d.]+)', l) for l in sys.stdin]
print(', '.join(f'{m[1]} {int(m[2]) / $(echo "$P" | awk '/requests in/ {print $1}'):.2f} ({m[3]} µs)' for m in rows if m and m[1] != 'config'))")"
# How many polls each of Redis's socket reads carried: about the coalescers' batch size (the
# count includes the few reads of the gateway's other connections), which Redis's per-read
# cost is spread over.
echo "status   CPU µs/req: nginx static $(cpu "$S") ($(cpu_split "$S")) | gateway $(cpu "$P") ($(cpu_split "$P")), Redis $(cpu "$P" 2) ($(cpu_split "$P" 2))"
[ -n "${SYSCALLS:-}" ] && echo "status   system calls per poll: nginx static $(syscalls "$S"), gateway $(syscalls "$P"), Redis $(syscalls "$P" 2)"
echo "status   polls per Redis read: $(redis-cli -p "$REDIS" info stats | awk -F: -v n="$(echo "$P" | awk '/requests in/ {print $1}')" '/^total_reads_processed/ {printf "%.1f (%d reads)", n / $2, $2}')"
# The same polls answered by the memory store: what the HTTP side of a poll costs without
# the Redis round trip.
poll_room $GW "$WORK/polls_mem.lua"
M=$(POLL_PREFIX="/api/v1/rooms/poll/tickets/" measured "$GW_PID" -- -s "$WORK/polls_mem.lua" "http://127.0.0.1:$GW/"); M_RPS=$(echo "$M" | rps); M_P99=$(echo "$M" | p99)
echo "status   gateway status (memory store, same script): ${M_RPS} req/s p99 ${M_P99} | ratio to the static file $(python3 -c "print(round($M_RPS/$S_RPS,2))") | gateway CPU $(cpu "$M") µs/req ($(cpu_split "$M"))"
[ -n "${SYSCALLS:-}" ] && echo "status   system calls per poll, memory store: gateway $(syscalls "$M")"

# 3. Joins with the Redis store.
cat > "$WORK/join.lua" <<'LUA'
wrk.method = "POST"
LUA
J=$(measured "$GWR_PID" "$REDIS_PID" -- -s "$WORK/join.lua" "http://127.0.0.1:$GWR/api/v1/rooms/poll/tickets"); J_RPS=$(echo "$J" | rps); J_P99=$(echo "$J" | p99)
WAITING=$(curl -sf "http://127.0.0.1:$GWR/api/v1/rooms/poll" | python3 -c 'import json,sys; print(json.load(sys.stdin)["waiting"])')
[ -n "${SYSCALLS:-}" ] && echo "join     system calls per join: gateway $(syscalls "$J"), Redis $(syscalls "$J" 2)"
echo "join     gateway (Redis): ${J_RPS} joins/s p99 ${J_P99} (room now holds ${WAITING} waiting) | CPU µs/req gateway $(cpu "$J") Redis $(cpu "$J" 2)"

# 4. The HTTP layer alone.
printf '%s' '{"status":"ok"}' > "$WORK/www/healthz"; chmod a+r "$WORK/www/healthz"
S=$(bench "http://127.0.0.1:$STATIC/healthz"); S_RPS=$(echo "$S" | rps)
H=$(measured "$GW_PID" -- "http://127.0.0.1:$GW/healthz"); H_RPS=$(echo "$H" | rps)
echo "healthz  nginx static: ${S_RPS} req/s | gateway /healthz: ${H_RPS} req/s | ratio $(python3 -c "print(round($H_RPS/$S_RPS,2))") | gateway CPU $(cpu "$H") µs/req"
