#!/usr/bin/env bash
# Two gateway builds side by side, next to nginx: an A/B that this machine's drift (±20 %
# over minutes) does not swamp.
#
#   queue-gateway/benches/ab.sh forward|status|join BUILD_A BUILD_B [ROUNDS=4] [DURATION=8s]
#
# Both gateways (default workers) run at once; each round runs wrk (-t2 -c50) against A,
# then B, then nginx, so each line of a round saw the same machine within seconds. Per
# gateway run: req/s, p99 and CPU (user + system, /proc) per request.
# forward: admitted requests (an admitted ticket's cookies, memory store) forwarded to an nginx
#   serving a static file; nginx's line is another nginx's proxy_pass to it, same request.
# status:  status polls cycling through 2,000 waiting tickets, each gateway on its own Redis
#   (whose CPU per poll is printed too); nginx's line serves a static file of the answer's
#   size through the same wrk script.
# join:    new tickets (POST, a new anonymous owner each) in one room, each gateway on its own
#   Redis; no nginx line (nothing to compare a join with).
# A_TOML_EXTRA: top-level config lines for A only (e.g. `demo_room = false` for a build from
#   before the demo room left the gateway for the all-in-one binary).
# Needs nginx, wrk, curl, python3, and for status and join redis-server.
set -euo pipefail
[ $# -ge 3 ] && [[ $1 =~ ^(forward|status|join)$ ]] || { sed -n 2,20p "$0"; exit 2; }
MODE=$1; A=$2; B=$3; ROUNDS=${4:-4}; DUR=${5:-8s}
cd "$(dirname "$0")/../.."
WORK=$(mktemp -d); PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
source queue-gateway/benches/common.sh
{ printf '%b\n' "${A_TOML_EXTRA:-}"; cat "$WORK/gw.toml"; } > "$WORK/gw-a.toml"
UP=$(free_port); PA=$(free_port); PB=$(free_port); PROXY=$(free_port); RA=$(free_port); RB=$(free_port)
start_nginx $UP $PROXY
REDIS_A=(); REDIS_B=(); WAIT=($UP $PA $PB $PROXY)
if [ "$MODE" != forward ]; then
  for p in $RA $RB; do redis-server --port $p --save '' --appendonly no --logfile "$WORK/redis.$p.log" & PIDS+=($!); done
  RPIDS=("${PIDS[@]: -2}")
  REDIS_A=(WR_REDIS_URL=redis://127.0.0.1:$RA); REDIS_B=(WR_REDIS_URL=redis://127.0.0.1:$RB); WAIT+=($RA $RB)
  wait_ports $RA $RB
fi
env "${REDIS_A[@]}" WR_LISTEN=127.0.0.1:$PA WR_UPSTREAM=http://127.0.0.1:$UP WR_ADMIN_TOKEN=$ADMIN WR_CONFIG=$WORK/gw-a.toml RUST_LOG=warn "$A" > "$WORK/a.log" 2>&1 & PIDS+=($!); GA=$!
env "${REDIS_B[@]}" WR_LISTEN=127.0.0.1:$PB WR_UPSTREAM=http://127.0.0.1:$UP WR_ADMIN_TOKEN=$ADMIN WR_CONFIG=$WORK/gw.toml RUST_LOG=warn "$B" > "$WORK/b.log" 2>&1 & PIDS+=($!); GB=$!
wait_ports "${WAIT[@]}"
TCK=$(getconf CLK_TCK)
ticks() { awk '{print $14 + $15}' /proc/$1/stat; }
req() { # wrk output → "req/s p99"
  printf '%9s req/s p99 %7s' "$(echo "$1" | awk '/Requests\/sec/ {print $2}')" "$(echo "$1" | awk '/ 99%/ {print $2}')"
}
per_req() { python3 -c "print(round(($2-$1)*1e6/$TCK/$3, 1))"; }
if [ "$MODE" = forward ]; then
  CA=$(admitted_cookie $PA); CB=$(admitted_cookie $PB)
  ARGS_A=(-H "cookie: $CA" "http://127.0.0.1:$PA/book/seat"); ARGS_B=(-H "cookie: $CB" "http://127.0.0.1:$PB/book/seat")
  # nginx gets the same request, cookies included.
  ARGS_N=(-H "cookie: $CA" "http://127.0.0.1:$PROXY/book/seat")
elif [ "$MODE" = join ]; then
  room $PA poll /poll/; room $PB poll /poll/
  printf 'wrk.method = "POST"\n' > "$WORK/join.lua"
  ARGS_A=(-s "$WORK/join.lua" "http://127.0.0.1:$PA/api/v1/rooms/poll/tickets")
  ARGS_B=(-s "$WORK/join.lua" "http://127.0.0.1:$PB/api/v1/rooms/poll/tickets")
else
  poll_room $PA "$WORK/a.lua"; poll_room $PB "$WORK/b.lua"
  T=$(sed -n 2p "$WORK/a.lua" | grep -o '[0-9a-f]\{32\}' | head -1); C=$(sed -n 2p "$WORK/a.lua" | grep -o 'wr_poll=[^"]*')
  curl -sf -H "cookie: $C" "http://127.0.0.1:$PA/api/v1/rooms/poll/tickets/$T" > "$WORK/www/status.json"; chmod a+r "$WORK/www/status.json"
  ARGS_A=(-s "$WORK/a.lua" "http://127.0.0.1:$PA/"); ARGS_B=(-s "$WORK/b.lua" "http://127.0.0.1:$PB/")
  ARGS_N=(-s "$WORK/a.lua" "http://127.0.0.1:$UP/")
fi
run() { # name gateway-pid redis-pid|- wrk-args...
  local name=$1 pid=$2 rpid=$3 t0 t1 r0 r1 out n extra=""
  shift 3
  t0=$(ticks $pid); [ "$rpid" = - ] || r0=$(ticks $rpid)
  out=$(POLL_PREFIX=/api/v1/rooms/poll/tickets/ wrk -t2 -c50 -d$DUR --latency "$@")
  t1=$(ticks $pid); [ "$rpid" = - ] || r1=$(ticks $rpid)
  n=$(echo "$out" | awk '/requests in/ {print $1}')
  [ "$rpid" = - ] || extra=" redis $(per_req $r0 $r1 $n)"
  echo "$name   $(req "$out") cpu $(per_req $t0 $t1 $n) µs/req$extra$(echo "$out" | awk '/Non-2xx/ {print " non-2xx: " $4}')"
}
RA_PID=-; RB_PID=-
[ "$MODE" != forward ] && { RA_PID=${RPIDS[0]}; RB_PID=${RPIDS[1]}; }
echo "# $(date -u +%FT%TZ) ab.sh $MODE, wrk -t2 -c50 -d$DUR, A=$A B=$B"
for r in $(seq $ROUNDS); do
  run A $GA $RA_PID "${ARGS_A[@]}"; run B $GB $RB_PID "${ARGS_B[@]}"
  [ "$MODE" = join ] && continue
  echo "nginx $(POLL_PREFIX="/status.json?t=" req "$(POLL_PREFIX="/status.json?t=" wrk -t2 -c50 -d$DUR --latency "${ARGS_N[@]}")")"
done
