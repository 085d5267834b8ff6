#!/usr/bin/env bash
# Runs Sluice's whole test suite on a fresh Debian/Ubuntu machine: installs the real clients the
# end-to-end tests drive (curl, nghttp, h2load, openssl, promtool and prometheus, grpcio,
# opentelemetry-proto) if
# they are missing, then checks formatting and
# lints and runs every test. `.ci/run` calls this script.
set -euo pipefail
cd "$(dirname "$0")"

need=()
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v nghttp >/dev/null 2>&1 || need+=(nghttp2-client)
command -v h2load >/dev/null 2>&1 || need+=(nghttp2-client)
command -v python3 >/dev/null 2>&1 || need+=(python3)
# The TLS passthrough tests' backends and client (openssl req, s_server, s_client).
command -v openssl >/dev/null 2>&1 || need+=(openssl)
python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
# The metrics tests: promtool lints a scrape, a real Prometheus server scrapes Sluice.
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
# The DNS discovery tests' local DNS server (tests/e2e/dns_server.py).
/usr/bin/python3 -c 'import dnslib' >/dev/null 2>&1 || need+=(python3-dnslib)
if ((${#need[@]})); then
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    echo "test.sh: installing ${need[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
        $(printf '%s\n' "${need[@]}" | sort -u)
fi

# The gRPC health check test runs a real grpcio server (tests/e2e/grpc_health_server.py);
# grpcio-health-checking is only on PyPI. tests/e2e/grpc.rs runs grpcio servers and clients
# (tests/e2e/grpc_peer.py) and fails, never skips, without them.
# tests/e2e/tracing.rs runs an OTLP/gRPC receiver (tests/e2e/otlp_receiver.py) built on
# grpcio and the opentelemetry-proto package.
if ! python3 -c 'import grpc, grpc_health.v1.health, opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc' >/dev/null 2>&1; then
    echo "test.sh: installing grpcio, grpcio-health-checking and opentelemetry-proto"
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
        --break-system-packages grpcio grpcio-health-checking opentelemetry-proto
fi

rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt clippy

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
