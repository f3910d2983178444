#!/usr/bin/env bash
# Admitted forwarding, two gateway builds side by side: an A/B that this machine's drift
# (±20 % over minutes) does not swamp.
#
#   queue-gateway/benches/forward_ab.sh BUILD_A BUILD_B [ROUNDS=4] [DURATION=8s]
#
# Both gateways (memory store, default workers) run at once in front of one nginx serving a
# static file, with nginx's own proxy_pass to the same file beside them; each round runs wrk
# (-t2 -c50, an admitted ticket's cookies) against A, then B, then nginx, so each line of a
# round saw the same machine within seconds. Per gateway run: req/s, p99 and the gateway's
# CPU (user + system, /proc) per request. Needs nginx, wrk, curl, python3.
set -euo pipefail
[ $# -ge 2 ] || { sed -n 2,12p "$0"; exit 2; }
A=$1; B=$2; ROUNDS=${3:-4}; DUR=${4:-8s}
WORK=$(mktemp -d); PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
UP=$(free_port); PA=$(free_port); PB=$(free_port); PROXY=$(free_port)
mkdir -p "$WORK/www/book" "$WORK/tmp"; chmod 755 "$WORK"
printf '%s' '{"ok":true,"page":"booking","seats":[1,2,3,4,5,6,7,8]}' > "$WORK/www/book/seat"; chmod -R a+rX "$WORK/www"
cat > "$WORK/nginx.conf" <<CONF
worker_processes auto; pid $WORK/nginx.pid; error_log $WORK/err.log warn;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  client_body_temp_path $WORK/tmp; proxy_temp_path $WORK/tmp; fastcgi_temp_path $WORK/tmp; uwsgi_temp_path $WORK/tmp; scgi_temp_path $WORK/tmp;
  upstream backend { server 127.0.0.1:$UP; keepalive 256; }
  server { listen 127.0.0.1:$UP; root $WORK/www; default_type application/json; }
  server { listen 127.0.0.1:$PROXY; location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_set_header X-Forwarded-For \$remote_addr; } } }
CONF
nginx -c "$WORK/nginx.conf" -g 'daemon off;' & PIDS+=($!)
cat > "$WORK/gw.toml" <<CONF
demo_room = false
CONF
ADMIN=bench-admin-token-0123456789
WR_LISTEN=127.0.0.1:$PA WR_UPSTREAM=http://127.0.0.1:$UP WR_ADMIN_TOKEN=$ADMIN WR_CONFIG=$WORK/gw.toml RUST_LOG=warn "$A" > "$WORK/a.log" 2>&1 & PIDS+=($!); GA=$!
WR_LISTEN=127.0.0.1:$PB WR_UPSTREAM=http://127.0.0.1:$UP WR_ADMIN_TOKEN=$ADMIN WR_CONFIG=$WORK/gw.toml RUST_LOG=warn "$B" > "$WORK/b.log" 2>&1 & PIDS+=($!); GB=$!
for p in $UP $PA $PB $PROXY; do for _ in $(seq 100); do (echo > /dev/tcp/127.0.0.1/$p) 2>/dev/null && break; sleep 0.1; done; done
cookie() {
  local jar="$WORK/jar.$1" t
  curl -sf -X PUT -H "authorization: Bearer $ADMIN" "http://127.0.0.1:$1/admin/v1/rooms/hot" -d '{"protect":["/book/"],"batch_size":1000,"tick_interval_ms":100,"session_ttl_s":3600,"paused":true}' > /dev/null
  t=$(curl -sf -c "$jar" -X POST "http://127.0.0.1:$1/api/v1/rooms/hot/tickets" | python3 -c 'import json,sys; print(json.load(sys.stdin)["ticket"])')
  curl -sf -X POST -H "authorization: Bearer $ADMIN" "http://127.0.0.1:$1/admin/v1/rooms/hot/admit" -d '{"count":1}' > /dev/null
  curl -sf -b "$jar" -c "$jar" "http://127.0.0.1:$1/api/v1/rooms/hot/tickets/$t" > /dev/null
  awk 'NF>=7 && $6 ~ /^wr_/ {printf "%s=%s; ", $6, $7}' "$jar"
}
CA=$(cookie $PA); CB=$(cookie $PB)
TCK=$(getconf CLK_TCK)
ticks() { awk '{print $14 + $15}' /proc/$1/stat; }
run() { # name port pid cookie
  local t0 t1 out n
  t0=$(ticks $3)
  out=$(wrk -t2 -c50 -d$DUR --latency -H "cookie: $4" "http://127.0.0.1:$2/book/seat")
  t1=$(ticks $3)
  n=$(echo "$out" | awk '/requests in/ {print $1}')
  printf '%-6s %9s req/s p99 %7s cpu %5.1f µs/req\n' "$1" "$(echo "$out" | awk '/Requests\/sec/ {print $2}')" "$(echo "$out" | awk '/ 99%/ {print $2}')" "$(python3 -c "print(($t1-$t0)*1e6/$TCK/$n)")"
}
for r in $(seq $ROUNDS); do
  run A $PA $GA "$CA"; run B $PB $GB "$CB"
  out=$(wrk -t2 -c50 -d$DUR --latency "http://127.0.0.1:$PROXY/book/seat"); printf 'nginx  %9s req/s p99 %7s\n' "$(echo "$out" | awk '/Requests\/sec/ {print $2}')" "$(echo "$out" | awk '/ 99%/ {print $2}')"
done
