# Shared by http_bench.sh and ab.sh (sourced, from the workspace root, after WORK and PIDS are
# set): the nginx pair both compare against, the gateway's bench config, and the rooms and
# cookies the runs use.

ADMIN=bench-admin-token-0123456789

# perf stat's events for system calls per request (SYSCALLS=1 in http_bench.sh and
# request_cost.sh): all of them, the usual ones by name, and the reads (recvfrom, read) that
# found nothing (-11: EAGAIN), counted on the exit tracepoints.
SYSCALL_EVENTS=(-e raw_syscalls:sys_enter)
for c in recvfrom sendto writev read write epoll_wait futex; do SYSCALL_EVENTS+=(-e "syscalls:sys_enter_$c"); done
SYSCALL_EVENTS+=(-e syscalls:sys_exit_recvfrom --filter 'ret == -11' -e syscalls:sys_exit_read --filter 'ret == -11')

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
wait_ports() { for p in "$@"; do for _ in $(seq 100); do (echo > /dev/tcp/127.0.0.1/$p) 2>/dev/null && break; sleep 0.1; done; done; }

# nginx_conf NAME SERVERS: $WORK/NAME.conf, two workers serving the given server blocks.
nginx_conf() {
  cat > "$WORK/$1.conf" <<CONF
worker_processes auto; pid $WORK/$1.pid; error_log $WORK/$1.err.log warn;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  client_body_temp_path $WORK/tmp; proxy_temp_path $WORK/tmp; fastcgi_temp_path $WORK/tmp;
  uwsgi_temp_path $WORK/tmp; scgi_temp_path $WORK/tmp;
  $2 }
CONF
}

# start_nginx UP PROXY [SERVERS]: an upstream nginx serving $WORK/www on port UP, and another
# proxying port PROXY to it (plus any further server blocks). The upstream is a server of its
# own, as a backend is: an nginx whose workers also served the proxy would often hand a
# proxied request to itself, a hop no real proxy gets for free. Sets UPSTREAM_PID, NGINX_PID.
start_nginx() {
  mkdir -p "$WORK/www/book" "$WORK/tmp"; chmod 755 "$WORK"
  printf '%s' '{"ok":true,"page":"booking","seats":[1,2,3,4,5,6,7,8]}' > "$WORK/www/book/seat"
  chmod -R a+rX "$WORK/www"
  nginx_conf upstream "server { listen 127.0.0.1:$1; root $WORK/www; default_type application/json; }"
  nginx_conf nginx "upstream backend { server 127.0.0.1:$1; keepalive 256; }
  server { listen 127.0.0.1:$2; location / { proxy_pass http://backend; proxy_http_version 1.1;
    proxy_set_header Connection \"\"; proxy_set_header X-Forwarded-For \$remote_addr; } }
  ${3:-}"
  nginx -c "$WORK/upstream.conf" -g 'daemon off;' & PIDS+=($!); UPSTREAM_PID=$!
  nginx -c "$WORK/nginx.conf" -g 'daemon off;' & PIDS+=($!); NGINX_PID=$!
}

# The gateways' config: rate limits out of the way.
cat > "$WORK/gw.toml" <<CONF
[rate_limits]
join_per_ip = { per_second = 10000000, burst = 10000000 }
status_per_ip = { per_second = 10000000, burst = 10000000 }
CONF

# room PORT ROOM PREFIX: a paused room protecting PREFIX, admissions lasting an hour.
room() {
  curl -sf -X PUT -H "authorization: Bearer $ADMIN" "http://127.0.0.1:$1/admin/v1/rooms/$2" \
    -d '{"protect":["'"$3"'"],"batch_size":1000,"tick_interval_ms":100,"session_ttl_s":3600,"paused":true}' > /dev/null
}

# admitted_cookie PORT: room `hot` protecting /book/, one ticket joined and admitted; prints
# its Cookie header ("wr_hot=...; wr_admission_hot=...; ").
admitted_cookie() {
  local jar="$WORK/jar.$1" t
  room "$1" hot /book/
  t=$(curl -sf -c "$jar" -X POST "http://127.0.0.1:$1/api/v1/rooms/hot/tickets" | python3 -c 'import json,sys; print(json.load(sys.stdin)["ticket"])')
  curl -sf -X POST -H "authorization: Bearer $ADMIN" "http://127.0.0.1:$1/admin/v1/rooms/hot/admit" -d '{"count":1}' > /dev/null
  curl -sf -b "$jar" -c "$jar" "http://127.0.0.1:$1/api/v1/rooms/hot/tickets/$t" > /dev/null
  awk 'NF>=7 && $6 ~ /^wr_/ {printf "%s=%s; ", $6, $7}' "$jar"
}

# poll_room PORT OUT.lua: room `poll` with 2,000 waiting tickets (after 100 others) and a wrk
# script polling them in turn, each with its own cookie.
poll_room() {
  room "$1" poll /poll/
  for _ in $(seq 100); do curl -sf -X POST "http://127.0.0.1:$1/api/v1/rooms/poll/tickets" > /dev/null; done
  python3 queue-gateway/benches/poll_script.py "$1" 2000 "$2"
}
