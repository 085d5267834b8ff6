#!/usr/bin/env python3
"""Helpers for benches/load.sh (standard library only).

  load_helpers.py hold PORT COUNT STATUS_FILE [CONCURRENCY]
      Opens COUNT HTTP/1.1 keep-alive connections to 127.0.0.1:PORT, sends one
      `GET /` on each (at most CONCURRENCY in flight), reads each response, then
      keeps every socket open. Writes "READY ok=N failed=M" to STATUS_FILE once
      all are done and sleeps until killed (SIGTERM/SIGINT closes the sockets).
      With HOLD_TLS=1 in the environment the connections are TLS (certificate not
      verified: the benchmark's self-signed one).

  load_helpers.py report RESULTS_FILE OUT_MD
      Renders the key=value results written by load.sh as a Markdown table plus
      a target check, prints it and writes it to OUT_MD.
"""

import asyncio
import math
import os
import signal
import sys


# ---------------------------------------------------------------------------
# hold


def _tls_context():
    if os.environ.get("HOLD_TLS") != "1":
        return None
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


_TLS = _tls_context()


async def _one(port, sem, keep, counters):
    async with sem:
        try:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1",
                port,
                ssl=_TLS,
                server_hostname="bench.local" if _TLS else None,
            )
            writer.write(
                b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: idle-holder\r\n\r\n"
            )
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            status = head.split(b" ", 2)[1]
            length = 0
            chunked = False
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value.strip())
                elif name == b"transfer-encoding" and b"chunked" in value.lower():
                    chunked = True
            if chunked:
                await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 10)
            elif length:
                await asyncio.wait_for(reader.readexactly(length), 10)
            if status != b"200":
                raise RuntimeError("status %r" % status)
            keep.append(writer)
            counters["ok"] += 1
        except Exception as e:  # noqa: BLE001 - count and report any failure
            counters["failed"] += 1
            if counters["failed"] <= 3:
                print("hold: connection failed: %r" % (e,), file=sys.stderr)


async def _hold(port, count, status_file, concurrency):
    sem = asyncio.Semaphore(concurrency)
    keep = []
    counters = {"ok": 0, "failed": 0}
    await asyncio.gather(*(_one(port, sem, keep, counters) for _ in range(count)))
    with open(status_file + ".tmp", "w") as f:
        f.write("READY ok=%d failed=%d\n" % (counters["ok"], counters["failed"]))
    os.replace(status_file + ".tmp", status_file)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await asyncio.wait_for(stop.wait(), 120)  # never outlive a stuck load.sh
    except asyncio.TimeoutError:
        pass
    for w in keep:
        w.close()


def hold(argv):
    port, count, status_file = int(argv[0]), int(argv[1]), argv[2]
    concurrency = int(argv[3]) if len(argv) > 3 else 100
    asyncio.run(_hold(port, count, status_file, concurrency))


# ---------------------------------------------------------------------------
# report


def _f(v):
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(x) else x


def report(argv):
    results_file, out_md = argv[0], argv[1]
    r = {}
    with open(results_file) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#") or "=" not in line:
                continue
            k, v = line.split("=", 1)
            r[k] = v
    targets = ["origin", "sluice", "nginx", "haproxy"]
    names = {
        "origin": "origin (direct)",
        "sluice": "Sluice",
        "nginx": "nginx",
        "haproxy": "HAProxy",
    }

    def get(t, k):
        return _f(r.get("%s.%s" % (t, k)))

    # Derived values.
    for t in targets:
        for p in ("p50", "p99"):
            v, base = get(t, "lat_" + p), get("origin", "lat_" + p)
            if t != "origin" and v is not None and base is not None:
                r["%s.added_%s" % (t, p)] = str(v - base)
        idle, held, n = get(t, "rss_idle_kib"), get(t, "rss_held_kib"), get(t, "held_conns")
        if idle is not None and held is not None and n:
            r["%s.kib_per_conn" % t] = str((held - idle) / n)
        if idle is not None:
            r["%s.rss_idle_mib" % t] = str(idle / 1024)
        if held is not None:
            r["%s.rss_held_mib" % t] = str(held / 1024)

    rows = [
        # (label, key, decimals, lower_is_better)
        ("HTTP/1.1 req/s (wrk, 50 conns)", "h1_rps", 0, False),
        ("HTTP/1.1 CPU µs/req (user+sys)", "h1_cpu_us", 2, True),
        ("  └ user µs/req", "h1_cpu_user_us", 2, True),
        ("  └ sys µs/req", "h1_cpu_sys_us", 2, True),
        ("HTTP/2 req/s (h2load, 10 conns × 10 streams)", "h2_rps", 0, False),
        ("HTTP/2 CPU µs/req (user+sys)", "h2_cpu_us", 2, True),
        ("  └ user µs/req", "h2_cpu_user_us", 2, True),
        ("  └ sys µs/req", "h2_cpu_sys_us", 2, True),
        ("p50 latency @ fixed rate, µs", "lat_p50", 1, True),
        ("p99 latency @ fixed rate, µs", "lat_p99", 1, True),
        ("p99.9 latency @ fixed rate, µs", "lat_p999", 1, True),
        ("added p50 vs origin, µs", "added_p50", 1, True),
        ("added p99 vs origin, µs", "added_p99", 1, True),
        ("idle RSS after start, MiB", "rss_idle_mib", 2, True),
        ("RSS with idle keep-alive conns held, MiB", "rss_held_mib", 2, True),
        ("keep-alive conns held (ESTABLISHED)", "held_conns", 0, None),
        ("RSS per idle keep-alive conn, KiB", "kib_per_conn", 2, True),
    ]

    def fmt(v, d):
        if v is None:
            return "–"
        return "{:,.{d}f}".format(v, d=d)

    def ratio(a, b):
        if a is None or b is None or b == 0:
            return "–"
        return "%.2f×" % (a / b)

    lines = []
    meta = r.get("meta.commit", "?")
    lines.append(
        "Sluice load benchmark — commit `%s`, %s, %s"
        % (meta, r.get("meta.date", "?"), r.get("meta.host", ""))
    )
    lines.append("")
    if r.get("meta.sluice_bin"):
        dirty = " Working tree: %s." % r["meta.dirty"] if r.get("meta.dirty") else ""
        lines.append("Sluice binary: %s.%s" % (r["meta.sluice_bin"], dirty))
        lines.append("")
    lines.append(
        "Proxies pinned to CPU %s (one worker each); origin (nginx `return 200`) and load "
        "generators on CPU %s. Fixed-rate latency: %s req/s, HTTP/1.1, open loop. Idle-connection "
        "test: %s connections, each after one request."
        % (
            r.get("meta.proxy_cpu", "0"),
            r.get("meta.load_cpu", "1"),
            r.get("meta.rate", "?"),
            r.get("meta.idle_conns", "?"),
        )
    )
    lines.append("")
    hdr = ["Metric"] + [names[t] for t in targets] + ["Sluice/nginx", "Sluice/HAProxy"]
    lines.append("| " + " | ".join(hdr) + " |")
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(hdr) - 1)) + "|")
    for label, key, d, _ in rows:
        vals = [get(t, key) for t in targets]
        if key in ("added_p50", "added_p99"):
            vals[0] = None
        s, n, h = vals[1], vals[2], vals[3]
        cells = [label] + [fmt(v, d) for v in vals]
        if key == "held_conns":
            cells += ["", ""]
        else:
            cells += [ratio(s, n), ratio(s, h)]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for kind, label in (("h1", "HTTP/1.1"), ("h2", "HTTP/2")):
        per = [
            "%s %s" % (names[t], " / ".join(
                "{:,.0f}".format(float(x)) for x in r.get("%s.%s_round_rps" % (t, kind), "").split()
            ))
            for t in targets
            if r.get("%s.%s_round_rps" % (t, kind))
        ]
        if per:
            lines.append(
                "%s req/s per interleaved round (%s rounds): %s."
                % (label, r.get("meta.rounds", "?"), "; ".join(per))
            )
    lines.append("")

    # Targets.
    def chk(name, ok, detail):
        if ok is None:
            return "| %s | n/a | %s |" % (name, detail)
        return "| %s | %s | %s |" % (name, "met" if ok else "**MISSED**", detail)

    s = lambda k: get("sluice", k)  # noqa: E731
    n = lambda k: get("nginx", k)  # noqa: E731

    def cmp(k, limit_factor, higher_better, unit, d):
        a, b = s(k), n(k)
        if a is None or b is None:
            return None, "missing data"
        lim = b * limit_factor
        ok = a >= lim if higher_better else a <= lim
        return ok, "Sluice %s %s vs limit %s (%.2f× nginx)" % (
            fmt(a, d),
            unit,
            fmt(lim, d),
            a / b if b else float("nan"),
        )

    lines.append("| Target | Result | Detail |")
    lines.append("|---|---|---|")
    ok, det = cmp("h1_rps", 0.95, True, "req/s", 0)
    lines.append(chk("HTTP/1.1 req/s ≥ 0.95× nginx", ok, det))
    ok, det = cmp("h1_cpu_us", 1.1, False, "µs/req", 2)
    lines.append(chk("HTTP/1.1 CPU/req ≤ 1.1× nginx", ok, det))
    ok, det = cmp("h2_cpu_us", 1.0, False, "µs/req", 2)
    lines.append(chk("HTTP/2 CPU/req ≤ nginx", ok, det))
    a, b = _f(r.get("sluice.added_p99")), _f(r.get("nginx.added_p99"))
    if a is None or b is None:
        lines.append(chk("added p99 ≤ 1.5× nginx", None, "missing data"))
    else:
        lines.append(
            chk(
                "added p99 @ %s req/s ≤ 1.5× nginx" % r.get("meta.rate", "?"),
                a <= 1.5 * b,
                "Sluice +%.1f µs vs limit %.1f µs (nginx +%.1f µs)" % (a, 1.5 * b, b),
            )
        )
    a = _f(r.get("sluice.rss_idle_mib"))
    if a is None:
        lines.append(chk("idle RSS ≤ 15 MB", None, "missing data"))
    else:
        mb = a * 1048576 / 1e6
        lines.append(
            chk("idle RSS ≤ 15 MB", mb <= 15.0, "%.2f MB (%.2f MiB)" % (mb, a))
        )
    a = _f(r.get("sluice.kib_per_conn"))
    held = _f(r.get("sluice.held_conns"))
    want = _f(r.get("meta.idle_conns"))
    if a is None:
        lines.append(chk("≤ 16 KiB per idle keep-alive conn", None, "missing data"))
    else:
        note = "%.2f KiB/conn" % a
        if held is not None and want and held < want * 0.99:
            note += " (only %d of %d connections were held!)" % (held, want)
        lines.append(chk("≤ 16 KiB per idle keep-alive conn", a <= 16.0, note))
    lines.append("")

    warn = [
        v for k, v in sorted(r.items()) if k.startswith("warn.") and not k.startswith("warn.noise.")
    ]
    noisy = [k[len("warn.noise."):] for k in sorted(r) if k.startswith("warn.noise.")]
    if noisy:
        warn.insert(
            0,
            "**other processes used the CPUs during %d phase(s) — the numbers of those phases "
            "are unreliable; rerun on an idle machine:** %s"
            % (
                len(noisy),
                "; ".join(r["warn.noise." + k].split(": ", 1)[0] + " (" + r["warn.noise." + k].split(": ", 1)[-1] + ")" for k in noisy),
            ),
        )
    if warn:
        lines.append("Warnings:")
        for w in warn:
            lines.append("- " + w)
        lines.append("")

    text = "\n".join(lines)
    print(text)
    with open(out_md, "w") as f:
        f.write(text + "\n")


def main():
    if len(sys.argv) < 2 or sys.argv[1] not in ("hold", "report"):
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    if sys.argv[1] == "hold":
        hold(sys.argv[2:])
    else:
        report(sys.argv[2:])


if __name__ == "__main__":
    main()
