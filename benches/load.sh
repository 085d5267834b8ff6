#!/usr/bin/env bash
# Load benchmark: Sluice, nginx and HAProxy as reverse proxies in front of the same origin,
# one run, one worker each on CPU $PROXY_CPU; origin and load generators on CPU $LOAD_CPU.
# See benches/README.md for what is measured and how to read the table.
#
#   bash benches/load.sh                 # build, run everything (~3–4 minutes), print the table
#   SKIP_BUILD=1 bash benches/load.sh    # use the existing target/release binaries
#   WAIT_QUIET=300 bash benches/load.sh  # first wait (<= 300 s) for other CPU users to finish
#   PROFILE=1 bash benches/load.sh       # also `perf record` Sluice under wrk afterwards
#   TLS_GRPC=0 bash benches/load.sh      # without the TLS and gRPC rows (tls.sh, grpc.sh and
#                                        # idle TLS memory, run at the end on the same cores)
#
# Results: stdout and benches/out/results.md; raw tool output in benches/out/run.*/ (latest
# symlinked as benches/out/latest).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT_DIR=${OUT_DIR:-$ROOT/benches/out}
DURATION=${DURATION:-10}         # seconds of wrk and of h2load per target (split in ROUNDS)
ROUNDS=${ROUNDS:-2}              # interleaved slices per target for wrk and h2load
LAT_DURATION=${LAT_DURATION:-36} # seconds recorded by the fixed-rate latency client, per target
LAT_ROUNDS=${LAT_ROUNDS:-12}     # interleaved slices those are split into (tail latency drifts
                                 # over seconds; short slices give every target the same drift)
RATE=${RATE:-2000}               # fixed rate, requests/s
IDLE_CONNS=${IDLE_CONNS:-10000}  # idle keep-alive connections held for the RSS test
WRK_CONNS=${WRK_CONNS:-50}
H2_CONNS=${H2_CONNS:-10}
H2_STREAMS=${H2_STREAMS:-10}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
SKIP_BUILD=${SKIP_BUILD:-0}
PROFILE=${PROFILE:-0}
BASE_PORT=${BASE_PORT:-18000}

ORIGIN_H1=$BASE_PORT
ORIGIN_H2=$((BASE_PORT + 1))
SLUICE_PORT=$((BASE_PORT + 10))
SLUICE_ADMIN=$((BASE_PORT + 11))
NGINX_H1=$((BASE_PORT + 20))
NGINX_H2=$((BASE_PORT + 21))
HAPROXY_H1=$((BASE_PORT + 30))
HAPROXY_H2=$((BASE_PORT + 31))

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# --- preflight -------------------------------------------------------------------------------
missing=()
need() { command -v "$1" >/dev/null 2>&1 || missing+=("$1 (Debian package: $2)"); }
need nginx nginx-light
need haproxy haproxy
need wrk wrk
need h2load nghttp2-client
need openssl openssl
need curl curl
need taskset util-linux
need ss iproute2
need python3 python3
need awk gawk
need pgrep procps
need flock util-linux
[[ $PROFILE == 1 ]] && need perf linux-perf
[[ $SKIP_BUILD == 1 ]] || need cargo "rustup / cargo"
if ((${#missing[@]})); then
    printf 'missing tools:\n' >&2
    printf '  %s\n' "${missing[@]}" >&2
    printf 'install with:\n  apt-get install -y nginx-light haproxy wrk nghttp2-client curl util-linux iproute2 python3 gawk procps%s\n' \
        "$([[ $PROFILE == 1 ]] && echo ' linux-perf')" >&2
    exit 1
fi
ncpu=$(nproc --all)
((PROXY_CPU < ncpu && LOAD_CPU < ncpu)) || die "need CPUs $PROXY_CPU and $LOAD_CPU, have $ncpu"
((PROXY_CPU != LOAD_CPU)) || log "WARNING: proxy and load generator share CPU $PROXY_CPU"

# File descriptors: the idle-connection test needs IDLE_CONNS per side plus headroom.
hard=$(ulimit -Hn)
if [[ $hard != unlimited ]] && ((hard < IDLE_CONNS + 500)); then
    die "ulimit -Hn is $hard; IDLE_CONNS=$IDLE_CONNS needs at least $((IDLE_CONNS + 500))"
fi
ulimit -n "$hard" 2>/dev/null || ulimit -n 65536
NOFILE=$(ulimit -n)

mkdir -p "$OUT_DIR"
# One run at a time: two would share CPUs and ports.
exec 9>"$OUT_DIR/.load.lock"
flock -n 9 || die "another benches/load.sh is running (lock $OUT_DIR/.load.lock)"
for p in $ORIGIN_H1 $ORIGIN_H2 $SLUICE_PORT $SLUICE_ADMIN $NGINX_H1 $NGINX_H2 $HAPROXY_H1 $HAPROXY_H2; do
    holder=$(ss -Htlnp "( sport = :$p )")
    [[ -z $holder ]] || die "port $p is in use (set BASE_PORT=...): $holder"
done
RUN=$(mktemp -d "$OUT_DIR/run.XXXXXX")
ln -sfn "$(basename "$RUN")" "$OUT_DIR/latest"
RES=$RUN/results.env
: >"$RES"
put() { printf '%s=%s\n' "$1" "$2" >>"$RES"; }
CLK_TCK=$(getconf CLK_TCK)

commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
porcelain=$(git -C "$ROOT" --no-optional-locks status --porcelain 2>/dev/null || true)
if [[ -n $porcelain ]]; then
    commit="$commit-dirty"
    put meta.dirty "$(wc -l <<<"$porcelain") uncommitted paths, $(grep -cv ' benches/' <<<"$porcelain" || true) outside benches/"
fi
put meta.commit "$commit"
put meta.host "$(nproc --all) CPUs, $(uname -r), nginx $(nginx -v 2>&1 | sed 's|.*/||'), HAProxy $(haproxy -v | awk 'NR==1{print $3}')"
put meta.proxy_cpu "$PROXY_CPU"
put meta.load_cpu "$LOAD_CPU"
put meta.rate "$RATE"
put meta.idle_conns "$IDLE_CONNS"
log "run directory: $RUN (commit $commit)"

# --- build -----------------------------------------------------------------------------------
SLUICE_BIN=${SLUICE_BIN:-$ROOT/target/release/sluice}
if [[ $SKIP_BUILD != 1 ]]; then
    log "building sluice (release) and the fixed_rate client"
    (cd "$ROOT" && cargo build --release --bin sluice) >"$RUN/build.log" 2>&1 ||
        { tail -30 "$RUN/build.log" >&2; die "cargo build failed (log: $RUN/build.log)"; }
    (cd "$ROOT" && cargo bench --bench fixed_rate --no-run --message-format=json) \
        >"$RUN/build-fixed-rate.json" 2>>"$RUN/build.log" ||
        { tail -30 "$RUN/build.log" >&2; die "building benches/fixed_rate.rs failed"; }
    FIXED_RATE_BIN=$(python3 -c '
import json, sys
exe = None
for line in open(sys.argv[1]):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("target", {}).get("name") == "fixed_rate" and m.get("executable"):
        exe = m["executable"]
print(exe or "")' "$RUN/build-fixed-rate.json")
fi
if [[ -z ${FIXED_RATE_BIN:-} ]]; then
    FIXED_RATE_BIN=$(find "$ROOT/target/release/deps" -maxdepth 1 -type f -name 'fixed_rate-*' -perm -u+x \
        -printf '%T@ %p\n' 2>/dev/null | sort -rn | awk 'NR==1{print $2}')
fi
[[ -x $SLUICE_BIN ]] || die "no sluice binary at $SLUICE_BIN (run without SKIP_BUILD=1)"
[[ -n $FIXED_RATE_BIN && -x $FIXED_RATE_BIN ]] ||
    die "fixed_rate client not found (cargo bench --bench fixed_rate --no-run)"
log "sluice: $SLUICE_BIN"
put meta.sluice_bin "sha256 $(sha256sum "$SLUICE_BIN" | cut -c1-12), built $(date -u -r "$SLUICE_BIN" +%Y-%m-%dT%H:%M:%SZ)"
log "fixed_rate: $FIXED_RATE_BIN"

# --- is the machine quiet? -------------------------------------------------------------------
# Anything else using the CPUs (a cargo build, say) skews every number. WAIT_QUIET=SECONDS waits
# up to that long for the machine to go idle; otherwise, and if it never does, the results carry
# a warning. Compilers seen running after each phase are reported the same way.
compilers() { ps -eo comm= | grep -Ex 'cargo|rustc|clippy-driver|rustdoc|cc1|cc1plus|ld|ld\.lld|rust-lld' | sort -u | tr '\n' ' ' || true; }
busy_pct() {
    local a1 b1 c1 d1 e1 f1 g1 h1 a2 b2 c2 d2 e2 f2 g2 h2 busy total
    read -r _ a1 b1 c1 d1 e1 f1 g1 h1 _ </proc/stat
    sleep 1
    read -r _ a2 b2 c2 d2 e2 f2 g2 h2 _ </proc/stat
    busy=$(((a2 + b2 + c2 + f2 + g2 + h2) - (a1 + b1 + c1 + f1 + g1 + h1)))
    total=$((busy + (d2 + e2) - (d1 + e1)))
    echo $((total > 0 ? busy * 100 / total : 0))
}
WAIT_QUIET=${WAIT_QUIET:-0}
waited=0
while :; do
    busy=$(busy_pct)
    ((busy > 10)) || [[ -n $(compilers) ]] || break
    if ((waited >= WAIT_QUIET)); then
        others=$(ps -eo pcpu=,comm= --sort=-pcpu | awk '$1 > 5 {printf "%s(%s%%) ", $2, $1}')
        log "WARNING: machine not idle before the run: ${busy}% CPU busy; ${others:-}"
        put warn.machine "machine was ${busy}% busy before the run (${others:-compiler running}); numbers are unreliable"
        break
    fi
    ((waited == 0)) && log "machine busy (${busy}%), waiting up to ${WAIT_QUIET}s for it to go idle"
    sleep 4
    waited=$((waited + 5))
done
put meta.date "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
put meta.rounds "$ROUNDS"
# CPU ticks used by user processes that are not this script's descendants (kernel threads
# excluded: softirq work for our own traffic lands there).
other_ticks() {
    { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v mine=" $(tree_pids $$ | tr '\n' ' ') " '
        { i = index($0, ") "); n = split(substr($0, i + 2), f, " ")
          if ($1 == 2 || f[2] == 2 || index(mine, " " $1 " ")) next
          t += f[12] + f[13] }
        END { print t + 0 }'
}
# noise_begin; ...phase...; noise_check PHASE SECONDS: records a warning if other processes used
# more than 5 % of a CPU during the phase, or a compiler was running at its end.
NOISE0=0
noise_begin() { NOISE0=$(other_ticks); }
noise_check() {
    local who used
    who=$(compilers)
    used=$(($(other_ticks) - NOISE0))
    if [[ -n $who ]] || ((used * 20 > ${2:-5} * CLK_TCK)); then
        put "warn.noise.$1" "$1: other processes used $((used * 1000 / CLK_TCK)) ms CPU${who:+ (compilers: $who)}"
    fi
}

# --- process management ----------------------------------------------------------------------
PIDS=()
tree_pids() {
    local p=$1 c
    [[ -d /proc/$p ]] || return 0
    echo "$p"
    for c in $(pgrep -P "$p" 2>/dev/null || true); do tree_pids "$c"; done
}
cleanup() {
    local rc=$? p all=() i
    set +e
    trap - EXIT INT TERM
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        for p in $(tree_pids "${PIDS[i]}"); do all+=("$p"); done
    done
    if ((${#all[@]})); then
        log "stopping ${#all[@]} processes"
        kill -TERM "${all[@]}" 2>/dev/null
        for i in $(seq 1 50); do
            alive=0
            for p in "${all[@]}"; do [[ -d /proc/$p ]] && alive=1; done
            ((alive)) || break
            sleep 0.1
        done
        for p in "${all[@]}"; do [[ -d /proc/$p ]] && kill -KILL "$p" 2>/dev/null; done
        wait 2>/dev/null
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start NAME CPU CMD...: runs CMD pinned to CPU in the background; sets PID_NAME.
start() {
    local name=$1 cpu=$2
    shift 2
    taskset -c "$cpu" "$@" >"$RUN/$name.out" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    echo "$pid" >"$RUN/$name.pid"
    printf -v "PID_$name" '%s' "$pid"
}

# wait_http NAME PID URL [curl args]: polls until URL answers 2xx; fails if PID dies.
wait_http() {
    local name=$1 pid=$2 url=$3 i
    shift 3
    for i in $(seq 1 200); do
        if curl -fsS -o /dev/null --max-time 1 "$@" "$url" 2>/dev/null; then return 0; fi
        if [[ ! -d /proc/$pid ]]; then
            tail -20 "$RUN/$name.out" >&2
            die "$name exited during start-up (log: $RUN/$name.out)"
        fi
        sleep 0.05
    done
    tail -20 "$RUN/$name.out" >&2
    die "$name: no answer from $url after 10 s"
}

# check_body NAME URL [curl args]: the proxy answers the origin's body.
check_body() {
    local name=$1 url=$2 body
    shift 2
    body=$(curl -fsS --max-time 2 "$@" "$url") || die "$name: request to $url failed"
    [[ $body == hello ]] || die "$name: unexpected body from $url: $body"
}

cpu_ticks() { # prints "utime stime" (clock ticks) summed over the process tree
    local u=0 s=0 a b p
    for p in $(tree_pids "$1"); do
        read -r a b < <(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12, $13}') || continue
        u=$((u + a))
        s=$((s + b))
    done
    echo "$u $s"
}
rss_kib() { # sum of VmRSS over the process tree, KiB
    local t=0 v p
    for p in $(tree_pids "$1"); do
        v=$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null || true)
        t=$((t + ${v:-0}))
    done
    echo "$t"
}
calc() { awk "BEGIN { printf \"%.4f\", $1 }"; }
established() { ss -Htn state established "( sport = :$1 )" | wc -l; }

# --- configs ---------------------------------------------------------------------------------
mkdir -p "$RUN/nginx-origin" "$RUN/nginx-proxy"
cat >"$RUN/nginx-origin.conf" <<EOF
user root;
worker_processes 1;
daemon off;
master_process on;
pid $RUN/nginx-origin.nginx.pid;
error_log $RUN/nginx-origin/error.log warn;
worker_rlimit_nofile $NOFILE;
events { worker_connections 20000; }
http {
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    client_body_temp_path $RUN/nginx-origin/body;
    proxy_temp_path $RUN/nginx-origin/proxy;
    fastcgi_temp_path $RUN/nginx-origin/fastcgi;
    uwsgi_temp_path $RUN/nginx-origin/uwsgi;
    scgi_temp_path $RUN/nginx-origin/scgi;
    server {
        listen 127.0.0.1:$ORIGIN_H1 backlog=4096;
        listen 127.0.0.1:$ORIGIN_H2 http2 backlog=4096;
        location / {
            default_type text/plain;
            return 200 "hello\n";
        }
    }
}
EOF

cat >"$RUN/nginx-proxy.conf" <<EOF
user root;
worker_processes 1;
daemon off;
master_process on;
pid $RUN/nginx-proxy.nginx.pid;
error_log $RUN/nginx-proxy/error.log warn;
worker_rlimit_nofile $NOFILE;
events { worker_connections 20000; }
http {
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    client_body_temp_path $RUN/nginx-proxy/body;
    proxy_temp_path $RUN/nginx-proxy/proxy;
    fastcgi_temp_path $RUN/nginx-proxy/fastcgi;
    uwsgi_temp_path $RUN/nginx-proxy/uwsgi;
    scgi_temp_path $RUN/nginx-proxy/scgi;
    upstream origin {
        server 127.0.0.1:$ORIGIN_H1;
        keepalive 128;
        keepalive_requests 100000000;
        keepalive_timeout 300s;
    }
    server {
        listen 127.0.0.1:$NGINX_H1 backlog=4096;
        listen 127.0.0.1:$NGINX_H2 http2 backlog=4096;
        location / {
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_set_header X-Request-Id \$request_id;
        }
    }
}
EOF

cat >"$RUN/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 12000
    # maxconn 12000 wants ~24k fds; the sandbox's hard limit may be lower (20000). Only
    # ~IDLE_CONNS+100 are really used, so start anyway.
    no strict-limits
    log stderr format short local0 err
defaults
    mode http
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout http-request 10s
    timeout http-keep-alive 300s
    option http-keep-alive
frontend bench
    bind 127.0.0.1:$HAPROXY_H1
    bind 127.0.0.1:$HAPROXY_H2 proto h2
    maxconn 12000
    option forwardfor
    http-request set-header X-Forwarded-Proto http
    unique-id-format %{+X}o\ %ci:%cp_%fi:%fp_%Ts_%rt:%pid
    unique-id-header X-Request-Id
    default_backend origin
backend origin
    http-reuse always
    server origin 127.0.0.1:$ORIGIN_H1
EOF

cat >"$RUN/sluice.yaml" <<EOF
admin: { address: 127.0.0.1:$SLUICE_ADMIN }
listeners:
  - name: bench
    address: 127.0.0.1:$SLUICE_PORT
    http: { route_table: main }
route_tables:
  - name: main
    virtual_hosts:
      - name: all
        domains: ["*"]
        routes:
          - match: { prefix: / }
            cluster: origin
clusters:
  - name: origin
    protocol: http1
    endpoints: [127.0.0.1:$ORIGIN_H1]
EOF

nginx -t -q -e "$RUN/nginx-origin/early.log" -c "$RUN/nginx-origin.conf" || die "origin nginx config invalid"
nginx -t -q -e "$RUN/nginx-proxy/early.log" -c "$RUN/nginx-proxy.conf" || die "proxy nginx config invalid"
haproxy -c -q -f "$RUN/haproxy.cfg" || die "haproxy config invalid"
"$SLUICE_BIN" validate "$RUN/sluice.yaml" >/dev/null || die "sluice config invalid"

# --- start -----------------------------------------------------------------------------------
log "starting origin (CPU $LOAD_CPU) and proxies (CPU $PROXY_CPU)"
start origin "$LOAD_CPU" nginx -e "$RUN/nginx-origin/early.log" -c "$RUN/nginx-origin.conf"
wait_http origin "$PID_origin" "http://127.0.0.1:$ORIGIN_H1/"
wait_http origin "$PID_origin" "http://127.0.0.1:$ORIGIN_H2/" --http2-prior-knowledge
start sluice "$PROXY_CPU" "$SLUICE_BIN" --log warn proxy -c "$RUN/sluice.yaml" --workers 1 --no-watch --drain-timeout 1s
start nginx "$PROXY_CPU" nginx -e "$RUN/nginx-proxy/early.log" -c "$RUN/nginx-proxy.conf"
start haproxy "$PROXY_CPU" haproxy -db -f "$RUN/haproxy.cfg"
wait_http sluice "$PID_sluice" "http://127.0.0.1:$SLUICE_ADMIN/ready"
wait_http sluice "$PID_sluice" "http://127.0.0.1:$SLUICE_PORT/"
wait_http nginx "$PID_nginx" "http://127.0.0.1:$NGINX_H1/"
wait_http haproxy "$PID_haproxy" "http://127.0.0.1:$HAPROXY_H1/"

declare -A H1=([origin]=$ORIGIN_H1 [sluice]=$SLUICE_PORT [nginx]=$NGINX_H1 [haproxy]=$HAPROXY_H1)
declare -A H2=([origin]=$ORIGIN_H2 [sluice]=$SLUICE_PORT [nginx]=$NGINX_H2 [haproxy]=$HAPROXY_H2)
declare -A PID=([origin]=$PID_origin [sluice]=$PID_sluice [nginx]=$PID_nginx [haproxy]=$PID_haproxy)
TARGETS=(origin sluice nginx haproxy)
PROXIES=(sluice nginx haproxy)

for t in "${TARGETS[@]}"; do
    check_body "$t" "http://127.0.0.1:${H1[$t]}/"
    check_body "$t" "http://127.0.0.1:${H2[$t]}/" --http2-prior-knowledge
done
for t in "${TARGETS[@]}"; do
    rss=$(rss_kib "${PID[$t]}")
    put "$t.rss_idle_kib" "$rss"
    log "$t: idle RSS $rss KiB ($(tree_pids "${PID[$t]}" | wc -l) processes)"
done

# --- idle keep-alive connections (first, so idle RSS is the after-start baseline) ------------
for t in "${PROXIES[@]}"; do
    port=${H1[$t]}
    status=$RUN/$t.hold.status
    log "$t: opening $IDLE_CONNS idle keep-alive connections"
    noise_begin
    taskset -c "$LOAD_CPU" python3 "$ROOT/benches/load_helpers.py" hold "$port" "$IDLE_CONNS" "$status" 100 \
        >"$RUN/$t.hold.out" 2>&1 &
    hpid=$!
    PIDS+=("$hpid")
    for i in $(seq 1 1200); do
        [[ -s $status ]] && break
        [[ -d /proc/$hpid ]] || { cat "$RUN/$t.hold.out" >&2; die "connection holder died"; }
        sleep 0.05
    done
    [[ -s $status ]] || die "$t: holder did not finish opening connections within 60 s"
    sleep 1 # let the proxy settle
    held=$(established "$port")
    rss=$(rss_kib "${PID[$t]}")
    put "$t.held_conns" "$held"
    put "$t.rss_held_kib" "$rss"
    log "$t: $(cat "$status"), $held established, RSS $rss KiB"
    grep -q 'failed=0' "$status" || put "warn.$t.hold" "$t: some idle connections failed: $(cat "$status")"
    ((held >= IDLE_CONNS * 99 / 100)) || put "warn.$t.held" "$t: only $held of $IDLE_CONNS connections were established when RSS was read"
    kill -TERM "$hpid" 2>/dev/null || true
    wait "$hpid" 2>/dev/null || true
    for i in $(seq 1 200); do
        (($(established "$port") < 10)) && break
        sleep 0.05
    done
    noise_check "idle.$t" 5
done

# --- throughput: HTTP/1.1 (wrk) and HTTP/2 (h2load) ------------------------------------------
# Each target is measured in ROUNDS slices of DURATION/ROUNDS seconds, the targets interleaved
# (origin, sluice, nginx, haproxy, origin, sluice, ...), so slow drift on a shared or virtual
# machine hits every target alike. Requests and CPU ticks are summed over the slices.
PER=$(((DURATION + ROUNDS - 1) / ROUNDS))
declare -A REQS USR SYS RPS_SUM ROUND_RPS
# measure KIND TARGET: one slice; accumulates into the arrays above under "KIND.TARGET".
measure() {
    local kind=$1 t=$2 k="$1.$2" url out u0 s0 u1 s1 reqs rps bad st
    noise_begin
    if [[ $kind == h1 ]]; then
        url="http://127.0.0.1:${H1[$t]}/"
        out=$RUN/$t.wrk.r$round.txt
        taskset -c "$LOAD_CPU" wrk -t1 -c"$WRK_CONNS" -d1s "$url" >"$RUN/$t.wrk-warmup.r$round.txt"
        read -r u0 s0 < <(cpu_ticks "${PID[$t]}")
        taskset -c "$LOAD_CPU" wrk -t1 -c"$WRK_CONNS" -d"${PER}s" --latency "$url" >"$out"
        read -r u1 s1 < <(cpu_ticks "${PID[$t]}")
        reqs=$(awk '/ requests in / {print $1}' "$out")
        rps=$(awk '/^Requests\/sec:/ {print $2}' "$out")
        [[ -n $reqs && $reqs -gt 0 ]] || die "$t: wrk completed no requests (see $out)"
        if grep -qE 'Non-2xx|Socket errors' "$out"; then
            put "warn.$k.r$round" "$t wrk: $(grep -E 'Non-2xx|Socket errors' "$out" | tr '\n' ' ')"
        fi
    else
        url="http://127.0.0.1:${H2[$t]}/"
        out=$RUN/$t.h2load.r$round.txt
        taskset -c "$LOAD_CPU" h2load -t1 -c"$H2_CONNS" -m"$H2_STREAMS" -n 10000 "$url" >"$RUN/$t.h2load-warmup.r$round.txt"
        read -r u0 s0 < <(cpu_ticks "${PID[$t]}")
        taskset -c "$LOAD_CPU" h2load -t1 -c"$H2_CONNS" -m"$H2_STREAMS" -D "$PER" "$url" >"$out"
        read -r u1 s1 < <(cpu_ticks "${PID[$t]}")
        reqs=$(awk '/^requests:/ {for (i = 1; i <= NF; i++) if ($i ~ /^succeeded/) print $(i-1)}' "$out")
        bad=$(awk '/^requests:/ {for (i = 1; i <= NF; i++) if ($i ~ /^(failed|errored|timeout)/) s += $(i-1); print s + 0}' "$out")
        rps=$(awk '/^finished in/ {for (i = 1; i <= NF; i++) if ($i ~ /^req\/s/) print $(i-1)}' "$out")
        st=$(awk '/^status codes:/ {print $3}' "$out")
        [[ -n $reqs && $reqs -gt 0 ]] || die "$t: h2load completed no requests (see $out)"
        ((bad == 0)) || put "warn.$k.r$round" "$t h2load: $bad failed/errored/timed-out requests"
        ((${st:-0} >= reqs)) || put "warn.$k.status.r$round" "$t h2load: only ${st:-0} of $reqs responses were 2xx"
    fi
    REQS[$k]=$((${REQS[$k]:-0} + reqs))
    USR[$k]=$((${USR[$k]:-0} + u1 - u0))
    SYS[$k]=$((${SYS[$k]:-0} + s1 - s0))
    RPS_SUM[$k]=$(calc "${RPS_SUM[$k]:-0} + $rps")
    ROUND_RPS[$k]="${ROUND_RPS[$k]:-}${ROUND_RPS[$k]:+ }$rps"
    log "$t $kind round $round: $rps req/s, $(calc "($u1 - $u0 + $s1 - $s0) * 1000000 / $CLK_TCK / $reqs") µs CPU/req"
    noise_check "$k.r$round" "$((PER + 1))"
}
for kind in h1 h2; do
    if [[ $kind == h1 ]]; then
        log "HTTP/1.1: wrk -t1 -c$WRK_CONNS, $ROUNDS × ${PER}s per target (after a 1 s warm-up each)"
    else
        log "HTTP/2: h2load -t1 -c$H2_CONNS -m$H2_STREAMS, $ROUNDS × ${PER}s per target"
    fi
    for ((round = 1; round <= ROUNDS; round++)); do
        for t in "${TARGETS[@]}"; do measure "$kind" "$t"; done
    done
    for t in "${TARGETS[@]}"; do
        k=$kind.$t
        put "$t.${kind}_rps" "$(calc "${RPS_SUM[$k]} / $ROUNDS")"
        put "$t.${kind}_round_rps" "${ROUND_RPS[$k]}"
        put "$t.${kind}_reqs" "${REQS[$k]}"
        put "$t.${kind}_cpu_us" "$(calc "(${USR[$k]} + ${SYS[$k]}) * 1000000 / $CLK_TCK / ${REQS[$k]}")"
        put "$t.${kind}_cpu_user_us" "$(calc "${USR[$k]} * 1000000 / $CLK_TCK / ${REQS[$k]}")"
        put "$t.${kind}_cpu_sys_us" "$(calc "${SYS[$k]} * 1000000 / $CLK_TCK / ${REQS[$k]}")"
    done
done
# Keep-alive to the origin: a proxy opening a connection per request would leave thousands of
# TIME_WAIT sockets towards the origin port.
tw=$(ss -Htn state time-wait "( dport = :$ORIGIN_H1 )" | wc -l)
put meta.origin_time_wait "$tw"
((tw < 2000)) || put warn.reuse "$tw TIME_WAIT connections to the origin after the throughput tests (a proxy without upstream keep-alive?)"
log "connections to the origin in TIME_WAIT after the throughput tests: $tw"

# --- latency at a fixed rate -----------------------------------------------------------------
# Also interleaved: LAT_ROUNDS runs of LAT_DURATION/LAT_ROUNDS seconds per target (each after a
# 1 s warm-up), percentiles computed over all recorded requests of a target.
LAT_PER=$(((LAT_DURATION + LAT_ROUNDS - 1) / LAT_ROUNDS))
put meta.lat_rounds "$LAT_ROUNDS"
log "latency: $RATE req/s open loop, $LAT_ROUNDS × ${LAT_PER}s per target"
for ((round = 1; round <= LAT_ROUNDS; round++)); do
    for t in "${TARGETS[@]}"; do
        url="http://127.0.0.1:${H1[$t]}/"
        out=$RUN/$t.latency.r$round.txt
        noise_begin
        taskset -c "$LOAD_CPU" "$FIXED_RATE_BIN" --url "$url" --rate "$RATE" --duration "$LAT_PER" \
            --warmup 1 --connections 16 --label "$t" --samples "$RUN/$t.latency.r$round.ns" >"$out" 2>&1 ||
            put "warn.$t.latency.r$round" "$t: fixed_rate reported errors (see $(basename "$RUN")/$(basename "$out"))"
        line=$(grep '^fixed_rate ' "$out" || true)
        [[ -n $line ]] || { cat "$out" >&2; die "$t: no output from fixed_rate"; }
        for kv in $line; do
            case $kv in
            pacer_late_100us=*)
                late=${kv#*=}
                ((late * 20 <= RATE * LAT_PER)) ||
                    put "warn.$t.pacer.r$round" "$t: $late of $((RATE * LAT_PER)) sends were >100 µs late (load CPU busy?)"
                ;;
            esac
        done
        log "round $round $(head -1 "$out")"
        noise_check "latency.$t.r$round" "$((LAT_PER + 1))"
    done
done
for t in "${TARGETS[@]}"; do
    read -r n p50 p99 p999 < <(cat "$RUN/$t".latency.r*.ns | python3 -c '
import math, sys
v = sorted(int(x) for x in sys.stdin if x.strip())
p = lambda q: v[min(len(v), max(1, math.ceil(q * len(v)))) - 1] / 1000 if v else float("nan")
print(len(v), "%.1f %.1f %.1f" % (p(0.50), p(0.99), p(0.999)))')
    put "$t.lat_samples" "$n"
    put "$t.lat_p50" "$p50"
    put "$t.lat_p99" "$p99"
    put "$t.lat_p999" "$p999"
    log "$t: $n requests at $RATE req/s: p50 $p50 µs, p99 $p99 µs, p99.9 $p999 µs"
done

# --- optional profile ------------------------------------------------------------------------
if [[ $PROFILE == 1 ]]; then
    log "profiling sluice under wrk for ${DURATION}s (perf record --call-graph dwarf)"
    taskset -c "$LOAD_CPU" wrk -t1 -c"$WRK_CONNS" -d"$((DURATION + 2))s" "http://127.0.0.1:$SLUICE_PORT/" \
        >"$RUN/sluice.wrk-profile.txt" &
    wpid=$!
    PIDS+=("$wpid")
    sleep 1
    # Rust release builds have no frame pointers: unwind with DWARF (.eh_frame).
    taskset -c "$LOAD_CPU" perf record -q -F 999 --call-graph dwarf,16384 -p "$PID_sluice" \
        -o "$RUN/perf.data" -- sleep "$DURATION" \
        >"$RUN/perf-record.out" 2>&1 || log "perf record failed (see $RUN/perf-record.out)"
    wait "$wpid" || true
    perf report -i "$RUN/perf.data" --no-children --percent-limit 1 --stdio -g none \
        >"$RUN/perf-report.txt" 2>/dev/null || true
    perf report -i "$RUN/perf.data" --children --percent-limit 3 --stdio -g caller,0.5,callee --max-stack 40 \
        >"$RUN/perf-report-callgraph.txt" 2>/dev/null || true
    perf report -i "$RUN/perf.data" --no-children --sort dso --stdio \
        -g none >"$RUN/perf-report-dso.txt" 2>/dev/null || true
    log "perf report: $RUN/perf-report.txt"
fi

# --- report ----------------------------------------------------------------------------------
python3 "$ROOT/benches/load_helpers.py" report "$RES" "$OUT_DIR/results.md"

# --- TLS and gRPC rows -----------------------------------------------------------------------
# The same pinned cores, the same release binary, in this run: TLS termination (keep-alive and
# new handshakes; benches/tls.sh), gRPC unary calls (benches/grpc.sh) and memory per idle TLS
# connection (benches/idle_conn.sh). TLS_GRPC=0 skips them.
if [[ ${TLS_GRPC:-1} == 1 ]]; then
    SLUICE_BIN=$ROOT/target/release/sluice
    log "TLS rows (benches/tls.sh)"
    tls_out=$(SKIP_BUILD=1 PROXY_CPU=$PROXY_CPU LOAD_CPU=$LOAD_CPU bash "$ROOT/benches/tls.sh" 2>"$RUN/tls.err") ||
        tls_out="tls.sh failed: $(tail -3 "$RUN/tls.err")"
    log "gRPC rows (benches/grpc.sh)"
    grpc_out=$(SKIP_BUILD=1 PROXY_CPU=$PROXY_CPU LOAD_CPU=$LOAD_CPU bash "$ROOT/benches/grpc.sh" 2>"$RUN/grpc.err") ||
        grpc_out="grpc.sh failed: $(tail -3 "$RUN/grpc.err")"
    log "idle TLS connections (benches/idle_conn.sh, N=$IDLE_CONNS)"
    idle_tls=$(TLS=1 N=$IDLE_CONNS bash "$ROOT/benches/idle_conn.sh" "$SLUICE_BIN" 2>&1 | tail -1)
    {
        printf '\n## TLS termination (HTTPS, TLS 1.3, ECDSA P-256; benches/tls.sh)\n\n%s\n' "$tls_out"
        printf '\n## gRPC unary calls (h2load, small messages; benches/grpc.sh)\n\n%s\n' "$grpc_out"
        printf '\n## Idle TLS connections (benches/idle_conn.sh with TLS=1)\n\n%s\n' "$idle_tls"
    } >>"$OUT_DIR/results.md"
fi
cp "$OUT_DIR/results.md" "$RUN/results.md"
log "written $OUT_DIR/results.md (raw output in $RUN)"
