"""A real gRPC peer (Python grpcio) for the gRPC end-to-end tests (tests/e2e/grpc.rs). No
protoc or generated code: one generic service, `test.Peer`, with raw-bytes messages.

Server: `grpc_peer.py server NAME` binds 127.0.0.1:0, prints the port on its first stdout
line, serves until stdin closes. Methods of `test.Peer`:

  Unary         unary        echoes the request
  Who, WhoElse  unary        answers NAME (for per-method routing)
  ServerStream  server-str.  request "N": answers "item-0" … "item-{N-1}"
  ClientStream  client-str.  answers the requests joined by ","
  Bidi          bidi         answers "echo:" + each request, as it comes
  Status        server-str.  request JSON {code, message, bin_hex, messages}: sends `messages`
                             replies, then ends with status `code`, `message` and the trailing
                             metadata `x-detail-bin` (the bytes of bin_hex) and `x-note: text`
  Slow          unary        records the deadline it was given (time_remaining), then waits
                             3 s or until cancelled
  Flaky         unary        request "KEY:N": the first N calls with KEY fail UNAVAILABLE
                             (trailers-only), later ones answer "ok after M calls"
  Stats         unary        answers JSON: calls per method, slow_deadlines, flaky counts

Client: `grpc_peer.py client HOST:PORT SPEC_JSON` makes one call and prints one JSON line:
{"code": int, "details": str, "replies": [...], "trailing": {key: hex}, "initial": {key: hex}}.
SPEC: {"method": "Unary", "kind": "unary"|"server"|"client"|"bidi", "requests": [str],
"big": bytes (one request of that many pattern bytes), "timeout": seconds, "hold": true (the
request stream stays open until stdin closes; each reply is also printed as it arrives)}. A reply longer
than 1 KiB is given as "sha256:HEX:LEN".
"""

import hashlib
import json
import sys
import threading
import time
from concurrent import futures

import grpc

SERVICE = "test.Peer"
MAX = 16 * 1024 * 1024
OPTIONS = [
    ("grpc.max_receive_message_length", MAX),
    ("grpc.max_send_message_length", MAX),
]


def ident(b):
    return b


class State:
    def __init__(self, name):
        self.name = name
        self.lock = threading.Lock()
        self.calls = {}
        self.slow_deadlines = []
        self.flaky = {}

    def count(self, method):
        with self.lock:
            self.calls[method] = self.calls.get(method, 0) + 1


def handlers(state):
    def unary(req, ctx):
        state.count("Unary")
        return req

    def who(req, ctx):
        state.count("Who")
        return state.name.encode()

    def who_else(req, ctx):
        state.count("WhoElse")
        return state.name.encode()

    def server_stream(req, ctx):
        state.count("ServerStream")
        for i in range(int(req.decode() or "0")):
            yield f"item-{i}".encode()

    def client_stream(reqs, ctx):
        state.count("ClientStream")
        return b",".join(reqs)

    def bidi(reqs, ctx):
        state.count("Bidi")
        for r in reqs:
            yield b"echo:" + r

    def status(req, ctx):
        state.count("Status")
        spec = json.loads(req.decode())
        for i in range(spec.get("messages", 0)):
            yield f"before-{i}".encode()
        ctx.set_trailing_metadata(
            (
                ("x-detail-bin", bytes.fromhex(spec.get("bin_hex", ""))),
                ("x-note", "text"),
            )
        )
        ctx.set_code(grpc.StatusCode(next(c for c in grpc.StatusCode if c.value[0] == spec["code"])))
        ctx.set_details(spec.get("message", ""))

    def slow(req, ctx):
        state.count("Slow")
        with state.lock:
            state.slow_deadlines.append(ctx.time_remaining())
        end = time.monotonic() + 3
        while ctx.is_active() and time.monotonic() < end:
            time.sleep(0.01)
        return b"slow done"

    def flaky(req, ctx):
        state.count("Flaky")
        key, n = req.decode().split(":")
        with state.lock:
            state.flaky[key] = state.flaky.get(key, 0) + 1
            m = state.flaky[key]
        if m <= int(n):
            ctx.abort(grpc.StatusCode.UNAVAILABLE, f"flaky call {m}")
        return f"ok after {m} calls".encode()

    def stats(req, ctx):
        with state.lock:
            return json.dumps(
                {
                    "calls": state.calls,
                    "slow_deadlines": state.slow_deadlines,
                    "flaky": state.flaky,
                }
            ).encode()

    u = lambda f: grpc.unary_unary_rpc_method_handler(f, ident, ident)
    s = lambda f: grpc.unary_stream_rpc_method_handler(f, ident, ident)
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Unary": u(unary),
            "Who": u(who),
            "WhoElse": u(who_else),
            "ServerStream": s(server_stream),
            "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream, ident, ident),
            "Bidi": grpc.stream_stream_rpc_method_handler(bidi, ident, ident),
            "Status": s(status),
            "Slow": u(slow),
            "Flaky": u(flaky),
            "Stats": u(stats),
        },
    )


def serve(name):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), options=OPTIONS)
    server.add_generic_rpc_handlers((handlers(State(name)),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    for _ in sys.stdin:
        pass
    server.stop(0)


def show(b):
    if len(b) > 1024:
        return f"sha256:{hashlib.sha256(b).hexdigest()}:{len(b)}"
    try:
        return b.decode()
    except UnicodeDecodeError:
        return "hex:" + b.hex()


def pattern(n):
    return bytes(i % 251 for i in range(n))


def md(pairs):
    out = {}
    for k, v in pairs or ():
        out[k] = v.hex() if isinstance(v, bytes) else v.encode().hex()
    return out


def client(target, spec):
    kind = spec.get("kind", "unary")
    method = f"/{SERVICE}/{spec['method']}"
    reqs = [r.encode() for r in spec.get("requests", [])]
    if "big" in spec:
        reqs = [pattern(spec["big"])]
    hold = spec.get("hold", False)
    if hold:
        # Keep the request stream open until stdin closes; each reply is printed as it comes.
        first = reqs

        def held():
            yield from first
            sys.stdin.read()

        reqs = held()
    timeout = spec.get("timeout")
    result = {"code": 0, "details": "", "replies": [], "trailing": {}, "initial": {}}
    # No client-side retries (transparent ones included): the test sees what Sluice answers.
    with grpc.insecure_channel(target, options=OPTIONS + [("grpc.enable_retries", 0)]) as ch:
        if kind == "unary":
            call = ch.unary_unary(method, ident, ident)
            f = call.future(reqs[0] if reqs else b"", timeout=timeout)
            it = None
        elif kind == "server":
            f = it = ch.unary_stream(method, ident, ident)(reqs[0] if reqs else b"", timeout=timeout)
        elif kind == "client":
            f = ch.stream_unary(method, ident, ident).future(iter(reqs), timeout=timeout)
            it = None
        else:
            f = it = ch.stream_stream(method, ident, ident)(iter(reqs), timeout=timeout)
        try:
            if it is not None:
                for r in it:
                    result["replies"].append(show(r))
                    if hold:
                        print(show(r), flush=True)
            else:
                result["replies"].append(show(f.result()))
        except grpc.RpcError:
            pass
        result["code"] = f.code().value[0]
        result["details"] = f.details() or ""
        result["trailing"] = md(f.trailing_metadata())
        result["initial"] = md(f.initial_metadata())
    print(json.dumps(result), flush=True)


def main():
    if sys.argv[1] == "server":
        serve(sys.argv[2])
    else:
        client(sys.argv[2], json.loads(sys.argv[3]))


if __name__ == "__main__":
    main()
