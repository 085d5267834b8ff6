#!/usr/bin/env bash
# Same-run A/B of proxy CPU per request for two or more sluice binaries (a change's cost, where
# load.sh compares Sluice with nginx and HAProxy): every binary forwards to the same nginx origin
# on one worker pinned to CPU 0; wrk (HTTP/1.1, 50 connections) and h2load (HTTP/2, 10 × 10
# streams) run from CPU 1 in ROUNDS interleaved slices of SLICE seconds per binary, so drift on
# a noisy host hits every binary alike. CPU per request = (utime + stime of the proxy over its
# slices) / requests completed.
#
#   bash benches/ab_cpu.sh OLD_BIN NEW_BIN          # ROUNDS=6 SLICE=5 by default
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-6}
SLICE=${SLICE:-5}
BASE=${BASE_PORT:-18700}
CLK_TCK=$(getconf CLK_TCK)
D=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$D"; }
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

mkdir -p "$D/origin"
cat >"$D/origin.conf" <<EOF
worker_processes 1;
daemon off;
pid $D/origin.pid;
error_log $D/origin/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 100000000;
    client_body_temp_path $D/origin/body;
    proxy_temp_path $D/origin/proxy;
    fastcgi_temp_path $D/origin/fastcgi;
    uwsgi_temp_path $D/origin/uwsgi;
    scgi_temp_path $D/origin/scgi;
    server {
        listen 127.0.0.1:$BASE;
        location / { default_type text/plain; return 200 "hello\n"; }
    }
}
EOF
taskset -c 1 nginx -e "$D/origin/early.log" -c "$D/origin.conf" &
PIDS+=($!)

i=0
declare -a PORT PID NAME
for BIN in "$@"; do
    i=$((i + 1))
    port=$((BASE + 10 * i))
    cat >"$D/s$i.yaml" <<Y
admin: { address: 127.0.0.1:$((port + 1)) }
listeners:
  - { name: bench, address: 127.0.0.1:$port, http: { route_table: main } }
route_tables:
  - name: main
    virtual_hosts:
      - { name: all, domains: ["*"], routes: [{ match: { prefix: / }, cluster: origin }] }
clusters:
  - { name: origin, protocol: http1, endpoints: [127.0.0.1:$BASE] }
Y
    taskset -c 0 "$BIN" --log warn proxy -c "$D/s$i.yaml" --workers 1 --no-watch >"$D/s$i.log" 2>&1 &
    PID[i]=$!
    PIDS+=($!)
    PORT[i]=$port
    NAME[i]=$BIN
done
n=$i
for i in $(seq 1 "$n"); do
    for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:${PORT[i]}/" >/dev/null && break; sleep 0.1; done
done

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
declare -A REQS TICKS
for kind in h1 h2; do
    for i in $(seq 1 "$n"); do REQS[$kind.$i]=0; TICKS[$kind.$i]=0; done
    for r in $(seq 1 "$ROUNDS"); do
        for i in $(seq 1 "$n"); do
            t0=$(ticks "${PID[i]}")
            if [[ $kind == h1 ]]; then
                out=$(taskset -c 1 wrk -t1 -c50 -d"${SLICE}s" "http://127.0.0.1:${PORT[i]}/")
                req=$(awk '/requests in/{print $1}' <<<"$out")
            else
                out=$(taskset -c 1 h2load -c10 -m10 -D"$SLICE" "http://127.0.0.1:${PORT[i]}/")
                req=$(awk '/^requests:/{print $8}' <<<"$out")
            fi
            t1=$(ticks "${PID[i]}")
            REQS[$kind.$i]=$((REQS[$kind.$i] + req))
            TICKS[$kind.$i]=$((TICKS[$kind.$i] + t1 - t0))
            printf 'round %d %s %s: %d requests, %.2f µs CPU/request\n' "$r" "$kind" "${NAME[i]}" "$req" \
                "$(python3 -c "print(($t1 - $t0) * 1e6 / $CLK_TCK / max($req, 1))")" >&2
        done
    done
done
echo "| binary | HTTP/1.1 CPU µs/req | HTTP/2 CPU µs/req |"
echo "|---|---:|---:|"
for i in $(seq 1 "$n"); do
    python3 -c "
h1 = ${TICKS[h1.$i]} * 1e6 / $CLK_TCK / max(${REQS[h1.$i]}, 1)
h2 = ${TICKS[h2.$i]} * 1e6 / $CLK_TCK / max(${REQS[h2.$i]}, 1)
print('| ${NAME[i]} | %.2f | %.2f |' % (h1, h2))"
done
