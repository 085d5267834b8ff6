#!/usr/bin/env python3
"""A small authoritative DNS server for the DNS discovery tests (tests/e2e/dns.rs).

Usage: dns_server.py ZONE.json

Serves on 127.0.0.1, UDP and TCP, on one free port, and prints the port on the first line of
stdout. The zone file is re-read on every query, so a test changes the answers by rewriting it:

    {"mode": "ok",            # "ok" | "servfail" (answer SERVFAIL) | "hold" (see below)
     "records": [
       {"name": "backend.test.", "type": "A", "value": "127.0.0.1", "ttl": 1},
       {"name": "backend.test.", "type": "AAAA", "value": "::1", "ttl": 1},
       {"name": "_http._tcp.backend.test.", "type": "SRV", "ttl": 1,
        "priority": 10, "weight": 5, "port": 8080, "target": "a.test."}]}

In "hold" mode a query gets no answer while the mode stays "hold" (so the client times out);
a held query is answered from the zone as soon as the mode changes (within 30 s), over UDP and
TCP alike (a TCP connection is not closed on it).

A name with no record of the asked type answers NOERROR with no records if the name has some
record, NXDOMAIN otherwise. Each answered query is counted in "queries" of the state file
ZONE.json.count (one line per query: name and type), for tests that want to see queries.
"""

import json
import socket
import sys
import threading
import time

from dnslib import AAAA, QTYPE, RCODE, RR, SRV, A, DNSLabel
from dnslib.server import BaseResolver, DNSServer

ZONE = sys.argv[1]
COUNT = ZONE + ".count"
lock = threading.Lock()


def load():
    with open(ZONE) as f:
        return json.load(f)


class ZoneResolver(BaseResolver):
    def resolve(self, request, handler):
        zone = load()
        deadline = time.monotonic() + 30
        while zone.get("mode") == "hold" and time.monotonic() < deadline:
            time.sleep(0.02)
            zone = load()
        mode = zone.get("mode", "ok")
        reply = request.reply()
        if mode == "hold":
            # Still held after 30 s: no reply (the handler fails on it and sends nothing; its
            # error is not printed, see `handle_error` below).
            return None
        if mode == "servfail":
            reply.header.rcode = RCODE.SERVFAIL
            return reply
        qname = request.q.qname
        qtype = QTYPE[request.q.qtype]
        with lock, open(COUNT, "a") as f:
            f.write(f"{qname} {qtype}\n")
        known = False
        for r in zone.get("records", []):
            if DNSLabel(r["name"]) != qname:
                continue
            known = True
            if r["type"] != qtype:
                continue
            ttl = r.get("ttl", 60)
            if qtype == "A":
                rdata = A(r["value"])
            elif qtype == "AAAA":
                rdata = AAAA(r["value"])
            elif qtype == "SRV":
                rdata = SRV(r["priority"], r["weight"], r["port"], r["target"])
            else:
                continue
            reply.add_answer(RR(qname, request.q.qtype, rdata=rdata, ttl=ttl))
        if not known:
            reply.header.rcode = RCODE.NXDOMAIN
        return reply


class QuietLogger:
    def __getattr__(self, name):
        return lambda *args: None


def main():
    resolver = ZoneResolver()
    logger = QuietLogger()
    # UDP on a free port, then TCP on the same port (retrying with another if TCP's is taken).
    for _ in range(50):
        udp = DNSServer(resolver, address="127.0.0.1", port=0, logger=logger)
        port = udp.server.server_address[1]
        try:
            tcp = DNSServer(resolver, address="127.0.0.1", port=port, tcp=True, logger=logger)
        except OSError:
            udp.server.server_close()
            continue
        break
    else:
        sys.exit("no free port for UDP and TCP")
    for server in (udp, tcp):
        server.server.handle_error = lambda *args: None
    udp.start_thread()
    tcp.start_thread()
    print(port, flush=True)
    # Exit when the test closes our stdin (or dies).
    sys.stdin.read()


if __name__ == "__main__":
    main()
