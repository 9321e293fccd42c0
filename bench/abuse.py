#!/usr/bin/env python3
"""
The hardening issue's attack set, full size (issue 9), against one real
daemon issuing from a local Pebble, everything on 127.0.0.1. The daemon
runs with kongacme's defaults (deadlines, connection caps) — only
listeners, the ACME section (``allow_any_domain: true``) and an Admin
token are set — and with the soft descriptor limit systemd gives a service
by default (1024; hard limit 20000), so that running out of descriptors is
part of the test.

Attacks, one after another (``tests/abuse.py`` has each; ``--scale``
multiplies the counts):

1. ``malformed``: 2,000 hostile first flights on the TLS port (random
   bytes, flipped and truncated ClientHellos, short records, HTTP, SNI with
   NUL, SNI of 300 bytes), 16 at a time.
2. ``idle_tls``: 3,000 connections that send nothing, held 15 s.
3. ``slowloris``: 200 connections on each of the TLS, HTTP and Admin ports
   trickling a ClientHello / request head one byte per 0.5 s, for 30 s.
4. ``idle_admin``: 1,100 idle Admin connections, held 10 s.
5. ``admin_upload``: 20 unauthenticated ``Content-Length: 100000000000``
   uploads, each sending as fast as it can for 2 s (bytes the daemon
   accepted before answering are reported).
6. ``random_sni``: 3,000 random names under ``allow_any_domain``, 20 at a
   time.
7. ``sighup``: 20 SIGHUPs in 2 s.

During every attack a checker thread handshakes for a name the daemon
already has a certificate for (verifying it against Pebble's root), one at
a time; a sampler reads the daemon's descriptors and RSS every 100 ms.
Reported per attack: inputs, the attack's own outcomes, cached handshakes
attempted and failed, peak descriptors and RSS, descriptors after, and
tracebacks in the daemon's log during the attack (expected 0).

Usage: ``python3 bench/abuse.py [--scale 0.1]``. Raw numbers:
``bench/out/abuse.json``; daemon log: ``bench/out/abuse/daemon.log``.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import benchlib as B
import issuance as I

sys.path.insert(0, B.REPO)
from tests import abuse  # noqa: E402
from tests.clienthellos import client_hello_bytes  # noqa: E402

CACHED = "cached.abuse.test"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", type=float, default=1.0, help="multiply every attack's count (default 1)")
    p.add_argument("--nofile", type=int, default=1024, help="the daemon's soft RLIMIT_NOFILE (default 1024)")
    p.add_argument("--only", action="append", default=[], help="run only these attacks (repeatable)")
    return p.parse_args(argv)


class Checker(threading.Thread):
    """Handshakes for the cached name, one after another, until stopped."""

    def __init__(self, port: int, cafile: str):
        super().__init__(daemon=True)
        self.port, self.cafile = port, cafile
        self.stop = threading.Event()
        self.attempted = 0
        self.failed: list[str] = []

    def run(self) -> None:
        while not self.stop.is_set():
            outcome = abuse.handshake_outcome(self.port, CACHED, self.cafile, timeout=10)
            self.attempted += 1
            if outcome != "verified":
                self.failed.append(outcome)
            self.stop.wait(0.05)


class Sampler(threading.Thread):
    """Peak descriptors and RSS of a process, every 100 ms."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid = pid
        self.stop = threading.Event()
        self.peak_fds = 0
        self.peak_rss = 0

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.peak_fds = max(self.peak_fds, abuse.fd_count(self.pid))
                self.peak_rss = max(self.peak_rss, B.rss_kib(self.pid))
            except OSError:
                pass
            self.stop.wait(0.1)


def attacks(args, daemon, pebble) -> list[tuple[str, int, callable]]:
    rng = random.Random(20261203)

    def n(count: int) -> int:
        return max(1, int(count * args.scale))

    hello = client_hello_bytes(CACHED)
    request = b"GET /.well-known/acme-challenge/x HTTP/1.1\r\nHost: a.abuse.test\r\nX-Pad: " + b"a" * 400

    def idle(port, count, hold):
        socks = abuse.open_idle(port, count)
        closed = abuse.closed_by_server(socks, hold)
        for s in socks:
            s.close()
        return {"opened": len(socks), "closed_by_server": closed}

    def slow():
        with ThreadPoolExecutor(3) as pool:
            futures = {
                name: pool.submit(abuse.slowloris, port, n(200), 30, first, 0.5)
                for name, port, first in (("tls", daemon.tls_port, hello), ("http", daemon.http_port, request),
                                          ("admin", daemon.admin_port, request))
            }
            return {name: f.result() for name, f in futures.items()}

    def uploads():
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda _: abuse.huge_upload(daemon.admin_port, 2.0), range(n(20))))
        return {"max_bytes_sent": max(r["sent"] for r in results),
                "statuses": sorted({r["status"] for r in results})}

    def random_sni():
        names = abuse.random_names(rng, n(3000), "rnd.abuse.test")
        with ThreadPoolExecutor(20) as pool:
            outcomes = list(pool.map(lambda name: abuse.handshake_outcome(daemon.tls_port, name, pebble.root_pem,
                                                                          timeout=30), names))
        counts: dict[str, int] = {}
        for o in outcomes:
            key = "failed" if o.startswith("failed") else o
            counts[key] = counts.get(key, 0) + 1
        return counts

    return [
        ("malformed", n(2000), lambda: abuse.malformed_hellos(daemon.tls_port, abuse.malformed_inputs(rng, n(2000)), 16)),
        ("idle_tls", n(3000), lambda: idle(daemon.tls_port, n(3000), 15)),
        ("slowloris", 3 * n(200), slow),
        ("idle_admin", n(1100), lambda: idle(daemon.admin_port, n(1100), 10)),
        ("admin_upload", n(20), uploads),
        ("random_sni", n(3000), random_sni),
        ("sighup", 20, lambda: abuse.sighup_burst(daemon.pid, 20, 2.0)),
    ]


def main(argv=None) -> int:
    args = parse_args(argv)
    work = B.out_dir("abuse")
    results = {"machine": B.machine_info(), "code": B.code_version(), "scale": args.scale,
               "nofile": args.nofile, "attacks": {}}
    with B.Processes() as procs:
        http_port = B.free_port()
        dns_port = I.start_dns(procs, work)
        pebble = I.Pebble(work)
        pebble.start(procs, http_port, dns_port, None)
        daemon = I.Daemon("abuse-daemon", work, pebble, http_port, handshake_wait=20, orders_per_minute=30,
                          max_orders_in_flight=10)
        import yaml

        with open(daemon.config_path) as f:
            config = yaml.safe_load(f)
        # kongacme's defaults for every limit and deadline: only what the
        # attack needs is set.
        config["tls"] = {}
        config["http"] = {"mode": "redirect"}
        config["admin"] = {"token": "abuse-token"}
        config["acme"]["allow_any_domain"] = True
        config["logging"] = {"level": "info", "format": "text", "file": "-"}
        for kind in ("tls", "http"):
            config["listen"][kind] = [d.replace(":backlog=1024", "") for d in config["listen"][kind]]
        for key in ("orders_per_minute", "max_orders_in_flight", "handshake_wait"):
            config["issuance"].pop(key)
        with open(daemon.config_path, "w") as f:
            yaml.safe_dump(config, f, sort_keys=False)

        def limit():
            resource.setrlimit(resource.RLIMIT_NOFILE, (args.nofile, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))

        daemon.proc = procs.start(daemon.name, B.kongacme_argv(daemon.config_path), cwd=B.REPO, env=B.kongacme_env(),
                                  log_path=os.path.join(work, "daemon.log"), preexec_fn=limit)
        for port in (daemon.tls_port, daemon.http_port, daemon.admin_port):
            B.wait_port(port, daemon.proc, 120)
        first = abuse.handshake_outcome(daemon.tls_port, CACHED, pebble.root_pem)
        if first != "verified":
            raise SystemExit("the cached name did not issue: %s\n%s" % (first, B.tail(daemon.proc.bench_log)))
        time.sleep(1)
        baseline = abuse.fd_count(daemon.pid)
        results["baseline_fds"] = baseline
        B.log("daemon up, %s cached, %d fds at rest" % (CACHED, baseline))

        for name, inputs, attack in attacks(args, daemon, pebble):
            if args.only and name not in args.only:
                continue
            log_start = os.path.getsize(daemon.proc.bench_log)
            checker, sampler = Checker(daemon.tls_port, pebble.root_pem), Sampler(daemon.pid)
            checker.start()
            sampler.start()
            started = time.monotonic()
            outcome = attack()
            took = time.monotonic() - started
            # Let deadlines close what the attack left, then read the resting state.
            deadline = time.monotonic() + 30
            while abuse.fd_count(daemon.pid) > baseline + 2 and time.monotonic() < deadline:
                time.sleep(0.2)
            checker.stop.set()
            sampler.stop.set()
            checker.join()
            sampler.join()
            with open(daemon.proc.bench_log, errors="replace") as f:
                f.seek(log_start)
                text = f.read()
            row = {
                "inputs": inputs,
                "seconds": round(took, 1),
                "outcome": outcome,
                "cached_attempted": checker.attempted,
                "cached_failed": len(checker.failed),
                "cached_failures": sorted(set(checker.failed))[:5],
                "peak_fds": sampler.peak_fds,
                "fds_after": abuse.fd_count(daemon.pid),
                "peak_rss_kib": sampler.peak_rss,
                "tracebacks": abuse.tracebacks(text),
                "emfile_lines": text.count("Too many open files"),
                "log_lines": text.count("\n"),
                "alive": daemon.proc.poll() is None,
            }
            results["attacks"][name] = row
            B.log(name, row)
            if not row["alive"]:
                break

    path = B.save_json("abuse.json", results)
    print()
    print("| attack | inputs | cached handshakes (failed) | peak fds | fds after (rest %d) | peak RSS MiB | "
          "log lines | tracebacks | outcome |" % results["baseline_fds"])
    print("|---|---|---|---|---|---|---|---|---|")
    for name, row in results["attacks"].items():
        print("| %s | %d | %d (%d) | %d | %d | %.0f | %d | %d | %s |" % (
            name, row["inputs"], row["cached_attempted"], row["cached_failed"], row["peak_fds"], row["fds_after"],
            row["peak_rss_kib"] / 1024, row["log_lines"], row["tracebacks"], row["outcome"]))
    print("\nraw:", path)
    ok = all(r["alive"] and r["tracebacks"] == 0 and r["cached_failed"] == 0 for r in results["attacks"].values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
