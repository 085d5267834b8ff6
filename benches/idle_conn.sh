#!/usr/bin/env bash
# Per-idle-connection memory of one or more sluice binaries, measured the same way one after
# the other (an A/B without nginx or HAProxy): each binary serves a direct-response route on one
# worker pinned to CPU 0; benches/load_helpers.py opens N keep-alive connections (one request
# each) from CPU 1; the result is (VmRSS with them held - VmRSS idle) / N.
#
#   bash benches/idle_conn.sh target/release/sluice /path/to/other/sluice   # N=10000 by default
#   TLS=1 bash benches/idle_conn.sh target/release/sluice   # the same over TLS 1.3 (idle TLS
#                                                           # connections after one request)
set -u
cd "$(dirname "$0")/.."
N=${N:-10000}
PORT=${PORT:-18600}
for BIN in "$@"; do
    D=$(mktemp -d)
    TLS_BLOCK=""
    if [[ ${TLS:-0} == 1 ]]; then
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
            -subj /CN=bench.local -addext subjectAltName=DNS:bench.local \
            -keyout "$D/k.pem" -out "$D/c.pem" 2>/dev/null
        TLS_BLOCK=", tls: { certificates: [{ cert: $D/c.pem, key: $D/k.pem }] }"
        export HOLD_TLS=1
    fi
    cat >"$D/c.yaml" <<Y
admin: { address: 127.0.0.1:$((PORT + 1)) }
listeners:
  - { name: l, address: 127.0.0.1:$PORT, http: { route_table: t }$TLS_BLOCK }
route_tables:
  - name: t
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes:
          - { match: { prefix: / }, direct_response: { status: 200, body: "hello\n" } }
Y
    ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
    taskset -c 0 "$BIN" --log warn proxy -c "$D/c.yaml" --workers 1 --no-watch >"$D/log" 2>&1 &
    P=$!
    for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$((PORT + 1))/ready" >/dev/null && break; sleep 0.1; done
    sleep 1
    idle=$(awk '/VmRSS/{print $2}' "/proc/$P/status")
    taskset -c 1 python3 benches/load_helpers.py hold "$PORT" "$N" "$D/status" 100 >"$D/hold.out" 2>&1 &
    H=$!
    for _ in $(seq 1 1200); do [[ -s $D/status ]] && break; sleep 0.05; done
    sleep 1
    held=$(awk '/VmRSS/{print $2}' "/proc/$P/status")
    echo "$BIN: idle ${idle} KiB, with $N connections ${held} KiB, $(python3 -c "print(round(($held - $idle) / $N, 2))") KiB per connection ($(cat "$D/status"))"
    kill "$H" 2>/dev/null
    kill -9 "$P" 2>/dev/null
    wait 2>/dev/null
    rm -rf "$D"
done
