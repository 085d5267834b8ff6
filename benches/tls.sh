#!/usr/bin/env bash
# TLS benchmark: Sluice, nginx and HAProxy terminating TLS (the same ECDSA P-256 certificate,
# TLS 1.3) in front of the same plaintext origin, one worker each on CPU $PROXY_CPU; the origin
# (nginx) and wrk on CPU $LOAD_CPU. Two rows, interleaved in $ROUNDS slices per target:
#   - keep-alive: HTTPS requests per second over $CONNS kept-alive connections;
#   - handshakes: `Connection: close` on every request, so each request is a new TCP
#     connection and a full TLS handshake (wrk does not resume sessions).
# Prints requests/s per target and each proxy's ratio to nginx.
#
#   bash benches/tls.sh                 # build release, run (~1 minute), print the table
#   SKIP_BUILD=1 bash benches/tls.sh    # use the existing target/release/sluice
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SLICE=${SLICE:-5}      # seconds per slice
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-50}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
BASE_PORT=${BASE_PORT:-18700}
SKIP_BUILD=${SKIP_BUILD:-0}
ORIGIN=$BASE_PORT
declare -A PORT=([sluice]=$((BASE_PORT + 1)) [nginx]=$((BASE_PORT + 2)) [haproxy]=$((BASE_PORT + 3)))

for t in nginx haproxy wrk openssl taskset curl; do
    command -v "$t" >/dev/null || { echo "need $t (apt-get install -y nginx-light haproxy wrk openssl util-linux curl)" >&2; exit 1; }
done
[[ $SKIP_BUILD == 1 ]] || (cd "$ROOT" && cargo build --release -q)
BIN=$ROOT/target/release/sluice
D=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; for p in "$D"/*.pid; do kill "$(cat "$p" 2>/dev/null)" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$D"' EXIT

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
    -subj /CN=bench.local -addext subjectAltName=DNS:bench.local \
    -keyout "$D/key.pem" -out "$D/cert.pem" 2>/dev/null
cat "$D/cert.pem" "$D/key.pem" >"$D/both.pem"

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
nginx_conf origin "server { listen 127.0.0.1:$ORIGIN; location / { return 200 \"hello\n\"; } }"
nginx_conf proxy "upstream o { server 127.0.0.1:$ORIGIN; keepalive 64; }
    server {
        listen 127.0.0.1:${PORT[nginx]} ssl;
        ssl_certificate $D/cert.pem; ssl_certificate_key $D/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        location / { proxy_pass http://o; proxy_http_version 1.1; proxy_set_header Connection \"\"; }
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
    bind 127.0.0.1:${PORT[haproxy]} ssl crt $D/both.pem
    default_backend o
backend o
    http-reuse always
    server o 127.0.0.1:$ORIGIN
EOF
cat >"$D/sluice.yaml" <<EOF
admin: { address: 127.0.0.1:$((BASE_PORT + 9)) }
listeners:
  - name: tls
    address: 127.0.0.1:${PORT[sluice]}
    http: { route_table: t, generate_request_id: false }
    tls: { certificates: [{ cert: $D/cert.pem, key: $D/key.pem }], alpn: [http/1.1] }
route_tables:
  - name: t
    virtual_hosts:
      - { name: all, domains: ["*"], routes: [{ match: { prefix: / }, cluster: o }] }
clusters:
  - { name: o, lb_policy: round_robin, endpoints: ["127.0.0.1:$ORIGIN"] }
EOF

taskset -c "$LOAD_CPU" nginx -c "$D/origin.conf" -e "$D/origin/early.log" &
taskset -c "$PROXY_CPU" nginx -c "$D/proxy.conf" -e "$D/proxy/early.log" &
taskset -c "$PROXY_CPU" haproxy -db -f "$D/haproxy.cfg" &
echo $! >"$D/haproxy.pid"
taskset -c "$PROXY_CPU" "$BIN" --log warn proxy -c "$D/sluice.yaml" --workers 1 --no-watch &
echo $! >"$D/sluice.pid"
for t in sluice nginx haproxy; do
    for _ in $(seq 1 100); do
        curl -skf "https://127.0.0.1:${PORT[$t]}/" >/dev/null 2>&1 && break
        sleep 0.1
    done
    curl -skf "https://127.0.0.1:${PORT[$t]}/" >/dev/null || { echo "$t did not come up" >&2; exit 1; }
done

# CPU time (utime + stime, clock ticks) of a proxy's serving process: Sluice itself, nginx's
# worker, HAProxy. Per request it tells whether the proxy or the load generator was the limit.
declare -A CPUPID=([sluice]=$(cat "$D/sluice.pid") [haproxy]=$(cat "$D/haproxy.pid")
    [nginx]=$(pgrep -P "$(cat "$D/proxy.nginx.pid")" | head -1))
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
declare -A KA HS KCPU HCPU KN HN
rps() { awk '/Requests\/sec/{print $2}'; }
reqs() { awk '/requests in/{print $1}'; }
run() { # TARGET EXTRA-ARGS... → "rps requests cpu_ticks"
    local t=$1; shift
    local c0 out
    c0=$(ticks "${CPUPID[$t]}")
    out=$(taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${SLICE}s" "$@" "https://127.0.0.1:${PORT[$t]}/")
    echo "$(rps <<<"$out") $(reqs <<<"$out") $(($(ticks "${CPUPID[$t]}") - c0))"
}
for _ in $(seq 1 "$ROUNDS"); do
    for t in sluice nginx haproxy; do
        read -r r n c <<<"$(run "$t")"
        KA[$t]="${KA[$t]:-} $r"; KN[$t]=$((${KN[$t]:-0} + n)); KCPU[$t]=$((${KCPU[$t]:-0} + c))
        read -r r n c <<<"$(run "$t" -H 'Connection: close')"
        HS[$t]="${HS[$t]:-} $r"; HN[$t]=$((${HN[$t]:-0} + n)); HCPU[$t]=$((${HCPU[$t]:-0} + c))
    done
done
mean() { python3 -c "import sys; v=[float(x) for x in sys.argv[1:]]; print(round(sum(v)/len(v)))" $1; }
HZ=$(getconf CLK_TCK)
us() { python3 -c "print(round($1 * 1e6 / $HZ / max($2, 1), 1))"; }
printf '| target | HTTPS keep-alive req/s | proxy CPU µs/request | new TLS handshakes/s | proxy CPU µs/handshake |\n|---|---|---|---|---|\n'
declare -A MK MH
for t in sluice nginx haproxy; do
    MK[$t]=$(mean "${KA[$t]}")
    MH[$t]=$(mean "${HS[$t]}")
    printf '| %s | %s | %s | %s | %s |\n' "$t" "${MK[$t]}" "$(us "${KCPU[$t]}" "${KN[$t]}")" \
        "${MH[$t]}" "$(us "${HCPU[$t]}" "${HN[$t]}")"
done
for t in sluice haproxy; do
    printf '%s / nginx: keep-alive %.2f, handshakes %.2f\n' "$t" \
        "$(python3 -c "print(${MK[$t]}/${MK[nginx]})")" "$(python3 -c "print(${MH[$t]}/${MH[nginx]})")"
done
