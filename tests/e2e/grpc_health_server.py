"""A real gRPC server (grpcio) serving only the standard health service, for the gRPC health
check test. Binds 127.0.0.1:0, prints the port on its first stdout line, then reads lines from
stdin: `SERVING` or `NOT_SERVING` sets the status of the whole server (service ""), and
`SERVING name` / `NOT_SERVING name` the status of service `name`. Each line is acknowledged
with `ok`. Exits when stdin closes."""

import sys
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc


def main():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    server.start()
    print(port, flush=True)
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        status = health_pb2.HealthCheckResponse.ServingStatus.Value(words[0])
        servicer.set(words[1] if len(words) > 1 else "", status)
        print("ok", flush=True)
    server.stop(0)


if __name__ == "__main__":
    main()
