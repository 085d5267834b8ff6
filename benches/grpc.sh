#!/usr/bin/env bash
# gRPC benchmark: unary calls with small messages through Sluice, nginx (grpc_pass) and HAProxy
# (h2 backend) to the same origin, one worker each on CPU $PROXY_CPU; origin and h2load on CPU
# $LOAD_CPU. The origin is nginx over h2c answering every call with one framed 5-byte message
# and the `grpc-status: 0` trailer (the proxies see a real gRPC exchange: HTTP/2, `te:
# trailers`, length-prefixed body, status in trailers). Reports calls/s, the proxy's CPU per
# call, and ratios to nginx; slices are interleaved.
#
#   bash benches/grpc.sh                 # build release, run (~1 minute), print the table
#   SKIP_BUILD=1 bash benches/grpc.sh
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SLICE=${SLICE:-5}
ROUNDS=${ROUNDS:-3}
CLIENTS=${CLIENTS:-10}
STREAMS=${STREAMS:-10}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
BASE_PORT=${BASE_PORT:-18800}
SKIP_BUILD=${SKIP_BUILD:-0}
ORIGIN=$BASE_PORT
declare -A PORT=([sluice]=$((BASE_PORT + 1)) [nginx]=$((BASE_PORT + 2)) [haproxy]=$((BASE_PORT + 3)))

for t in nginx haproxy h2load taskset python3; do
    command -v "$t" >/dev/null || { echo "need $t (apt-get install -y nginx-light haproxy nghttp2-client util-linux python3)" >&2; exit 1; }
done
[[ $SKIP_BUILD == 1 ]] || (cd "$ROOT" && cargo build --release -q)
BIN=$ROOT/target/release/sluice
D=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$D"' EXIT

# One gRPC message: flag 0, length 5, "hello"; the request carries the same.
mkdir -p "$D/www/pkg.Bench"
printf '\0\0\0\0\5hello' >"$D/www/pkg.Bench/Unary"
printf '\0\0\0\0\5hello' >"$D/request.bin"
# nginx's workers run unprivileged: they must be able to read the message file.
chmod -R a+rX "$D"

nginx_conf() { # NAME BODY
    mkdir -p "$D/$1"
    cat >"$D/$1.conf" <<EOF
worker_processes 1;
daemon off;
pid $D/$1.nginx.pid;
error_log $D/$1/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $D/$1/b; proxy_temp_path $D/$1/p; fastcgi_temp_path $D/$1/f;
    uwsgi_temp_path $D/$1/u; scgi_temp_path $D/$1/s;
    keepalive_requests 1000000;
    $2
}
EOF
}
# The origin answers POSTs with the static message (nginx serves static files to GET only, so
# POST is rewritten to a GET-style static read via error_page 405).
nginx_conf origin "server {
        listen 127.0.0.1:$ORIGIN http2;
        root $D/www;
        location / {
            default_type application/grpc;
            add_trailer grpc-status 0 always;
            error_page 405 =200 \$uri;
        }
    }"
nginx_conf proxy "upstream o { server 127.0.0.1:$ORIGIN; keepalive 64; }
    server {
        listen 127.0.0.1:${PORT[nginx]} http2;
        location / { grpc_pass grpc://o; }
    }"
cat >"$D/haproxy.cfg" <<EOF
global
    nbthread 1
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend f
    bind 127.0.0.1:${PORT[haproxy]} proto h2
    default_backend o
backend o
    http-reuse always
    server o 127.0.0.1:$ORIGIN proto h2
EOF
cat >"$D/sluice.yaml" <<EOF
admin: { address: 127.0.0.1:$((BASE_PORT + 9)) }
listeners:
  - name: grpc
    address: 127.0.0.1:${PORT[sluice]}
    http: { route_table: t, generate_request_id: false }
route_tables:
  - name: t
    virtual_hosts:
      - { name: all, domains: ["*"], routes: [{ match: { prefix: /pkg.Bench/ }, cluster: o }] }
clusters:
  - { name: o, protocol: http2, lb_policy: round_robin, endpoints: ["127.0.0.1:$ORIGIN"] }
EOF

taskset -c "$LOAD_CPU" nginx -c "$D/origin.conf" -e "$D/origin/early.log" &
taskset -c "$PROXY_CPU" nginx -c "$D/proxy.conf" -e "$D/proxy/early.log" &
taskset -c "$PROXY_CPU" haproxy -db -f "$D/haproxy.cfg" &
HAPROXY_PID=$!
taskset -c "$PROXY_CPU" "$BIN" --log warn proxy -c "$D/sluice.yaml" --workers 1 --no-watch &
SLUICE_PID=$!

call() { # PORT SECONDS → h2load output
    h2load -D "$2" -c "$CLIENTS" -m "$STREAMS" -d "$D/request.bin" \
        -H 'content-type: application/grpc' -H 'te: trailers' \
        "http://127.0.0.1:$1/pkg.Bench/Unary" 2>&1
}
for t in sluice nginx haproxy; do
    ok=""
    for _ in $(seq 1 100); do
        if h2load -n 1 -c 1 -d "$D/request.bin" -H 'content-type: application/grpc' \
            "http://127.0.0.1:${PORT[$t]}/pkg.Bench/Unary" 2>/dev/null | grep -q '1 succeeded'; then
            ok=1
            break
        fi
        sleep 0.1
    done
    [[ -n $ok ]] || { echo "$t does not answer gRPC calls" >&2; exit 1; }
done
declare -A CPUPID=([sluice]=$SLUICE_PID [haproxy]=$HAPROXY_PID
    [nginx]=$(pgrep -P "$(cat "$D/proxy.nginx.pid")" | head -1))
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

declare -A RATE N CPU
for _ in $(seq 1 "$ROUNDS"); do
    for t in sluice nginx haproxy; do
        c0=$(ticks "${CPUPID[$t]}")
        out=$(taskset -c "$LOAD_CPU" bash -c "$(declare -f call); D=$D CLIENTS=$CLIENTS STREAMS=$STREAMS call ${PORT[$t]} $SLICE")
        c1=$(ticks "${CPUPID[$t]}")
        ok=$(awk '/^requests:/{for(i=1;i<=NF;i++) if($(i+1)=="succeeded,") print $i}' <<<"$out")
        failed=$(awk '/^requests:/{for(i=1;i<=NF;i++) if($(i+1)=="failed,") print $i}' <<<"$out")
        [[ ${failed:-0} == 0 ]] || echo "$t: $failed failed calls" >&2
        RATE[$t]="${RATE[$t]:-} $(awk '/^finished in/{print $4}' <<<"$out")"
        N[$t]=$((${N[$t]:-0} + ${ok:-0}))
        CPU[$t]=$((${CPU[$t]:-0} + c1 - c0))
    done
done
HZ=$(getconf CLK_TCK)
mean() { python3 -c "import sys; v=[float(x) for x in sys.argv[1:]]; print(round(sum(v)/len(v)))" $1; }
printf '| target | unary calls/s | proxy CPU µs/call |\n|---|---|---|\n'
declare -A M U
for t in sluice nginx haproxy; do
    M[$t]=$(mean "${RATE[$t]}")
    U[$t]=$(python3 -c "print(round(${CPU[$t]} * 1e6 / $HZ / max(${N[$t]}, 1), 1))")
    printf '| %s | %s | %s |\n' "$t" "${M[$t]}" "${U[$t]}"
done
for t in sluice haproxy; do
    printf '%s / nginx: calls/s %.2f, CPU per call %.2f\n' "$t" \
        "$(python3 -c "print(${M[$t]}/${M[nginx]})")" "$(python3 -c "print(${U[$t]}/${U[nginx]})")"
done
