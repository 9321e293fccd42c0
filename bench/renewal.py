#!/usr/bin/env python3
"""
Renewal passes in a real daemon (issue 5): what a pass costs, and whether it
disturbs serving.

Part "idle" -- a pass over 10,000 managed certificates where none is due:

1. a ``redis-server`` (core 1) is filled with --certs ECDSA P-256
   certificates under Kong's keys (bench/cold_start.py's certificate set,
   issued once into bench/out/cold-start/, ~90 days of validity left, so
   none is due; its pipelined fill);
2. a ``twistd -n kongacme`` daemon on core 0: ``acme.storage: redis``,
   on-demand issuance off, ``acme.api_uri`` unreachable (never contacted:
   nothing is due, ``renewal.ari: false``), ``renewal.first_check`` and
   ``check_interval`` 30 days (passes run only when this script asks),
   route ``*.cold.test`` to an HAProxy upstream answering 200 on core 1,
   JSON logs; timed from start to its "N certificate(s) loaded" line;
3. passes are triggered with ``PATCH /acme`` on the Admin API (202; the
   pass runs in the background). The end of a pass is the daemon's log
   line "renewal pass from the Admin API: N checked, ..." (its JSON
   ``log_time``; the log is followed every millisecond, so the daemon is not
   polled); ``GET /status`` (``renewal.passes``, ``renewal.last_pass``) is
   read after each timed pass to check the count and that nothing was due.
   Per pass: wall time from sending the PATCH to that line, and the daemon's
   on-CPU time over the same span (/proc/<pid>/task/*/schedstat, ns). The
   first pass after start reads every certificate's dates once, so it is
   reported apart from the median of the next --passes. For scale, the CPU
   of a trivial Admin API request (``GET /nope``, 404) is measured the same
   way;
4. serving: a client process pinned to core 1 (--threads threads, Python
   ``ssl``, TLS 1.3, no resumption, no verification) opens one new
   connection per request over --serve-names names among the certificates
   (every name's context built beforehand by one unmeasured pass), sends
   ``GET /`` with ``Connection: close`` and reads the answer, for --window
   seconds, with NO pass running vs with passes triggered back to back (the
   next PATCH as soon as the previous pass's line appears); --rounds
   alternating rounds, medians. Reported: connections/s (each a full
   handshake), handshake latency p50/p99/max (connect -> handshake done),
   daemon CPU utilisation and passes per second;
5. unless --no-first-under-load: a second daemon on the same Redis, its
   contexts warmed the same way, gets its FIRST pass while the client runs;
   connections started during that pass vs before it.

Part "due" -- a pass that renews --due certificates, against Pebble:

1. a DNS stub (every name -> 127.0.0.1) and Pebble (``PEBBLE_VA_NOSLEEP=1``,
   its default 5 %% nonce rejection; bench/issuance.py's classes) on core 1;
2. a fresh Redis holding --due certificates for ``dNNN.bench.test``, issued
   by the bench's TestCA 80 days ago with 90 days of validity (10 days
   left: due under the 14-day threshold);
3. the daemon on core 0 with ``acme.domains: ["*.bench.test"]``,
   ``api_uri`` = Pebble, ``issuance.ca_bundle`` = Pebble's listener CA, its
   HTTP listener on Pebble's ``httpPort`` (http-01),
   ``renewal.max_parallel`` --max-parallel (renewals at once in a pass;
   default 2, the daemon's default), ``renewal.ari: false``,
   ``reuse_key`` default (true). One ``POST /acme`` for a warm-up name first
   (registers the ACME account; not timed). Every due name's context is
   built by one unmeasured pass of the client;
4. the client (as above, over the --due names) runs --window seconds on the
   idle daemon, then again while ``PATCH /acme`` renews them, until the
   pass's log line (then ``GET /status`` must show ``last_pass.renewed``
   with --due names). Reported: pass duration, renewals/s, failures,
   connections/s and handshake latency during the pass vs idle, CPU of the
   daemon and Pebble. A renewed name's first handshake builds a new
   context: that cost is part of "during the pass". --due-rounds rounds,
   each with a fresh Redis and daemon. --due-background N adds N
   certificates that are not due (bench/cold_start.py's set) to the same
   Redis, so the pass also walks a large managed set.

Pebble, Redis, the upstream, the DNS stub, the client and this script share
core 1 (benchlib.CLIENT_CPU); the daemon has core 0 (SERVER_CPU).

Usage: python3 bench/renewal.py [--part idle|due|both] [--rounds 5] [--passes 10] [--window 6]
       [--certs 10000] [--due 500] [--due-rounds 3]
Raw numbers: bench/out/renewal.json; logs: bench/out/renewal/.
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import random
import socket
import ssl
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as B  # noqa: E402
import cold_start  # noqa: E402  (certificate set, Redis fill)

HERE = os.path.abspath(__file__)
DUE_DOMAIN = "bench.test"
PASS_LINE = "renewal pass from the Admin API"
LOADED_LINE = "certificate(s) loaded from storage"
MONTH = 30 * 86400


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=("idle", "due", "both"), default="both",
                   help="which part to run (default both)")
    p.add_argument("--certs", type=int, default=10000, help="idle part: certificates in Redis, none due (default 10000)")
    p.add_argument("--passes", type=int, default=10,
                   help="idle part: timed passes after the first one; median (default 10)")
    p.add_argument("--rounds", type=int, default=5,
                   help="idle part: alternating serving rounds (no pass / passes back to back) (default 5)")
    p.add_argument("--window", type=float, default=6.0,
                   help="seconds of client load per serving measure (default 6)")
    p.add_argument("--threads", type=int, default=4, help="client threads (connections at once) (default 4)")
    p.add_argument("--serve-names", type=int, default=2000,
                   help="idle part: names (among --certs) the client spreads SNI over (default 2000)")
    p.add_argument("--due", type=int, default=500, help="due part: due certificates renewed by the pass (default 500)")
    p.add_argument("--due-rounds", type=int, default=3,
                   help="due part: rounds (fresh Redis + daemon each) (default 3)")
    p.add_argument("--max-parallel", type=int, default=2,
                   help="due part: renewal.max_parallel = renewals at once in a pass (default 2, the daemon's default)")
    p.add_argument("--pass-timeout", type=float, default=300.0,
                   help="due part: seconds to wait for the pass to end (default 300)")
    p.add_argument("--no-first-under-load", dest="first_under_load", action="store_false",
                   help="idle part: skip the extra daemon start that times the first pass while the client runs")
    p.add_argument("--due-background", type=int, default=0,
                   help="due part: also load this many certificates that are NOT due (bench/cold_start.py's set, "
                        "*.cold.test) beside the due ones (default 0)")
    p.add_argument("--json", default="renewal.json", help="result file under bench/out/ (default renewal.json)")
    p.add_argument("--client-child", metavar="SPEC", help=argparse.SUPPRESS)
    return p.parse_args(argv)


# -- the client (child process on the client core) -------------------------------------


def client_child(spec_path: str) -> None:
    """
    Full TLS 1.3 handshakes, one new connection per request: connect, handshake
    (timed), ``GET /`` with ``Connection: close``, read to EOF. Runs until
    ``duration`` passes, ``stop_file`` exists, or (``once``) every name was
    used once. Writes ``{"start", "end", "records": [[t0, hs_s, total_s, ok]]}``
    (t0 epoch seconds) to ``out``.
    """
    with open(spec_path) as f:
        spec = json.load(f)
    names, threads, port = spec["names"], spec["threads"], spec["port"]
    stop_file, once = spec.get("stop_file"), spec.get("once", False)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_alpn_protocols(["http/1.1"])
    records: list[list] = [[] for _ in range(threads)]
    errors: list[str] = []
    stop = threading.Event()
    start = time.time()
    deadline = start + spec["duration"]

    def worker(i: int) -> None:
        out = records[i]
        j = i
        while not stop.is_set():
            if once and j >= len(names):
                return
            name = names[j % len(names)]
            j += threads
            wall0 = time.time()
            t0 = time.perf_counter()
            hs = None
            ok = False
            try:
                hs, data = B.tls_get(ctx, port, name)
                ok = data.startswith(b"HTTP/1.1 200")
                if not ok and len(errors) < 5:
                    errors.append("%s: answer %r" % (name, data[:60]))
            except Exception as e:  # noqa: BLE001 - counted and reported
                if len(errors) < 5:
                    errors.append("%s: %r" % (name, e))
            out.append([wall0, hs, time.perf_counter() - t0, ok])

    def watcher() -> None:
        while not stop.is_set():
            if time.time() >= deadline or (stop_file and os.path.exists(stop_file)):
                stop.set()
                return
            time.sleep(0.005)

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    w = threading.Thread(target=watcher, daemon=True)
    w.start()
    for t in pool:
        t.join()
    stop.set()
    end = time.time()
    with open(spec["out"], "w") as f:
        json.dump({"start": start, "end": end, "cpu_s": time.process_time(),
                   "records": [r for rs in records for r in rs], "errors": errors}, f)


class Client:
    """The client child, started on the client core; ``result()`` waits for it."""

    def __init__(self, procs: B.Processes, work: str, tag: str, port: int, names, threads: int,
                 duration: float, once: bool = False, stop_file: str | None = None):
        self.procs = procs
        self.out = os.path.join(work, "client-%s.json" % tag)
        spec = os.path.join(work, "client-%s.spec.json" % tag)
        for path in (self.out, stop_file):
            if path and os.path.exists(path):
                os.remove(path)
        with open(spec, "w") as f:
            json.dump({"names": list(names), "threads": threads, "port": port, "duration": duration,
                       "once": once, "stop_file": stop_file, "out": self.out}, f)
        self.proc = procs.start("renewal-client-" + tag, [sys.executable, HERE, "--client-child", spec],
                                cpu=B.CLIENT_CPU, log_path=os.path.join(work, "client-%s.log" % tag),
                                env=B.kongacme_env())

    def running(self) -> bool:
        return self.proc.poll() is None

    def result(self, timeout: float = 600.0) -> dict:
        self.proc.wait(timeout)
        self.procs.stop(self.proc)
        if self.proc.returncode != 0 or not os.path.exists(self.out):
            raise RuntimeError("client failed (%s):\n%s" % (self.proc.returncode, B.tail(self.proc.bench_log)))
        with open(self.out) as f:
            return json.load(f)


def pct(values, q: float):
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, max(0, int(round(q / 100.0 * (len(values) - 1)))))]


def client_stats(res: dict, start: float | None = None, end: float | None = None) -> dict:
    """
    Connections completed OK per second over [start, end] (default: the
    client's own span), and handshake latency of connections that started in
    it (ms).
    """
    start = res["start"] if start is None else start
    end = res["end"] if end is None else end
    recs = res["records"]
    done = [r for r in recs if start <= r[0] + r[2] <= end]
    ok = [r for r in done if r[3]]
    started = [r for r in recs if start <= r[0] <= end and r[1] is not None]
    hs = [1000 * r[1] for r in started]
    return {
        "span_s": end - start,
        "ok": len(ok),
        "errors": len(done) - len(ok),
        "conn_per_s": len(ok) / (end - start) if end > start else None,
        "hs_p50_ms": pct(hs, 50),
        "hs_p99_ms": pct(hs, 99),
        "hs_max_ms": max(hs) if hs else None,
        "total_p50_ms": pct([1000 * r[2] for r in started], 50),
    }


# -- the daemon's log and Admin API ---------------------------------------------------------


class LogFollower:
    """Reads the daemon's JSON log lines as they are written."""

    def __init__(self, path: str):
        self.path = path
        self.offset = 0
        self.partial = b""

    def events(self) -> list[dict]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        data = self.partial + data
        lines = data.split(b"\n")
        self.partial = lines.pop()
        out = []
        for line in lines:
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except ValueError:
                out.append({"log_format": line.decode(errors="replace"), "log_time": 0.0})
        return out

    def wait_for(self, needle: str, timeout: float, proc=None, poll: float = 0.001) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events():
                if needle in (event.get("log_format") or ""):
                    return event
            if proc is not None and proc.poll() is not None:
                raise RuntimeError("daemon exited:\n" + B.tail(self.path))
            if time.monotonic() > deadline:
                raise RuntimeError("no %r in the daemon log within %.0f s:\n%s" % (needle, timeout, B.tail(self.path)))
            time.sleep(poll)


def admin(port: int, method: str, path: str, body: dict | None = None, timeout: float = 60.0) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=payload, headers=headers)
        response = conn.getresponse()
        data = response.read()
        try:
            return response.status, json.loads(data) if data else {}
        except ValueError:
            return response.status, {"raw": data[:200].decode(errors="replace")}
    finally:
        conn.close()


class Daemon:
    def __init__(self, procs: B.Processes, work: str, tag: str, config: dict):
        import yaml

        self.procs, self.work, self.tag = procs, work, tag
        self.tls_port = int(config["listen"]["tls"][0].split(":")[1])
        self.admin_port = int(config["listen"]["admin"][0].split(":")[1])
        self.config_path = os.path.join(work, "kongacme-%s.yaml" % tag)
        with open(self.config_path, "w") as f:
            yaml.safe_dump(config, f, sort_keys=False)
        self.log_path = os.path.join(work, "daemon-%s.log" % tag)
        self.follower = LogFollower(self.log_path)
        self.t0 = time.time()
        self.proc = procs.start("renewal-" + tag, B.kongacme_argv(self.config_path), cpu=B.SERVER_CPU, cwd=B.REPO,
                                env=B.kongacme_env(), log_path=self.log_path)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_loaded(self, expected: int, timeout: float = 300.0) -> float:
        event = self.follower.wait_for(LOADED_LINE, timeout, self.proc, poll=0.01)
        if event.get("count") != expected:
            raise RuntimeError("daemon loaded %r certificates, expected %d" % (event.get("count"), expected))
        B.wait_port(self.tls_port, self.proc, 60)
        B.wait_port(self.admin_port, self.proc, 60)
        return event["log_time"] - self.t0

    def cpu(self) -> float:
        return B.cpu_seconds_sched(self.pid)

    def status(self) -> dict:
        code, body = admin(self.admin_port, "GET", "/status")
        if code != 200:
            raise RuntimeError("GET /status: %d %r" % (code, body))
        return body

    def timed_pass(self, timeout: float = 60.0) -> dict:
        """PATCH /acme, wait for the pass's log line; wall time and CPU."""
        self.follower.events()  # skip what is already there
        cpu0 = self.cpu()
        t0 = time.time()
        code, body = admin(self.admin_port, "PATCH", "/acme")
        if code != 202:
            raise RuntimeError("PATCH /acme: %d %r" % (code, body))
        event = self.follower.wait_for(PASS_LINE, timeout, self.proc)
        seen = time.time()
        cpu = self.cpu() - cpu0
        return {"wall_s": event["log_time"] - t0, "seen_s": seen - t0, "cpu_s": cpu,
                "checked": event.get("checked"), "renewed": event.get("renewed"), "failed": event.get("failed"),
                "t_patch": t0, "t_end": event["log_time"]}

    def stop(self) -> None:
        self.procs.stop(self.proc)


def base_config(work: str, tag: str, redis_port: int, up_port: int, domain: str) -> dict:
    """bench/cold_start.py's daemon config plus an admin listener, a route, renewal settings and JSON logs."""
    import yaml

    tls_port, admin_port = B.free_port(), B.free_port()
    with open(cold_start.write_config(work, tag, tls_port, redis_port)) as f:
        config = yaml.safe_load(f)
    config["listen"]["admin"] = ["tcp:%d:interface=127.0.0.1" % admin_port]
    config["routes"] = [{"hosts": ["*." + domain], "upstream": "127.0.0.1:%d" % up_port, "alpn": ["http/1.1"]}]
    config["acme"]["domains"] = ["*." + domain]
    config["renewal"] = {"ari": False, "first_check": MONTH, "check_interval": MONTH}
    config["logging"] = {"level": "info", "format": "json", "file": "-"}
    return config


# -- part 1: 10,000 certificates, none due ----------------------------------------------------


def part_idle(args, procs: B.Processes, work: str, up_port: int, results: dict) -> None:
    from kongacme.storage import keys

    ca_pem, entries = cold_start.certificates(args.certs)
    now = time.time()
    days_left = min(keys.decode_renew_config(e[3]).expire_at - now for e in entries) / 86400
    if days_left < 31:
        raise SystemExit("bench/out/cold-start/certs.jsonl is too old (%.1f days left: due); delete it to reissue"
                         % days_left)
    redis_port, redis = cold_start.start_redis(procs, work, "idle")
    fill_s = cold_start.fill(redis_port, entries)
    config = base_config(work, "idle", redis_port, up_port, cold_start.DOMAIN)
    daemon = Daemon(procs, work, "idle", config)
    loaded_s = daemon.wait_loaded(len(entries))
    r: dict = {"certs": len(entries), "min_days_left": days_left, "fill_s": fill_s, "loaded_s": loaded_s,
               "rss_kib_loaded": B.rss_kib(daemon.pid)}
    B.log("idle: %d certificates loaded %.1f s after start (min %.1f days left, none due)" % (
        len(entries), loaded_s, days_left))

    hosts = [cold_start.host(i) for i in range(len(entries))]
    names = random.Random(5).sample(hosts, min(args.serve_names, len(hosts)))
    warm = Client(procs, work, "idle-warm", daemon.tls_port, names, args.threads, 600, once=True).result()
    ws = client_stats(warm)
    r["warm"] = ws
    B.log("idle: contexts for %d names built (%d ok, %d errors)" % (len(names), ws["ok"], ws["errors"]))
    time.sleep(1.0)

    # Passes, timed, one at a time on a quiet daemon.
    passes = []
    for i in range(args.passes + 1):
        p = daemon.timed_pass()
        status = daemon.status()["renewal"]
        p["status_passes"] = status["passes"]
        last = status["last_pass"] or {}
        p["status_checked"] = last.get("checked")
        p["status_renewed"] = len(last.get("renewed") or ())
        if status["passes"] != i + 1 or last.get("checked") != len(entries) or last.get("renewed"):
            raise RuntimeError("unexpected /status after pass %d: %r" % (i + 1, status))
        passes.append(p)
        B.log("idle pass %d: %.1f ms wall, %.1f ms daemon CPU, %d checked" % (
            i + 1, 1000 * p["wall_s"], 1000 * p["cpu_s"], p["checked"]))
        time.sleep(0.2)
    # The same measure for a trivial Admin API request (404), for scale.
    control = []
    for _ in range(args.passes):
        cpu0 = daemon.cpu()
        t0 = time.time()
        code, _ = admin(daemon.admin_port, "GET", "/nope")
        control.append({"wall_s": time.time() - t0, "cpu_s": daemon.cpu() - cpu0, "code": code})
        time.sleep(0.1)
    r["passes"] = passes
    r["control_get_404"] = control
    later = passes[1:]
    r["first_pass"] = {"wall_ms": 1000 * passes[0]["wall_s"], "cpu_ms": 1000 * passes[0]["cpu_s"]}
    r["later_passes"] = {"wall_ms": 1000 * B.median(p["wall_s"] for p in later) if later else None,
                         "cpu_ms": 1000 * B.median(p["cpu_s"] for p in later) if later else None,
                         "wall_ms_max": 1000 * max(p["wall_s"] for p in later) if later else None}
    r["control"] = {"wall_ms": 1000 * B.median(c["wall_s"] for c in control),
                    "cpu_ms": 1000 * B.median(c["cpu_s"] for c in control)}

    # Serving with no pass vs passes back to back.
    rounds = []
    for rnd in range(args.rounds):
        for mode in (("none", "back_to_back") if rnd % 2 == 0 else ("back_to_back", "none")):
            stop_file = os.path.join(work, "stop")
            cpu0, t0 = daemon.cpu(), time.time()
            client = Client(procs, work, "idle-%d-%s" % (rnd, mode), daemon.tls_port, names, args.threads,
                            args.window, stop_file=stop_file)
            pass_count, pass_wall = 0, []
            if mode == "back_to_back":
                while client.running():
                    p = daemon.timed_pass()
                    pass_count += 1
                    pass_wall.append(p["wall_s"])
            res = client.result()
            cpu, wall = daemon.cpu() - cpu0, time.time() - t0
            s = client_stats(res)
            s.update({"round": rnd, "mode": mode, "daemon_cpu_s": cpu, "daemon_util": cpu / wall,
                      "conn_per_cpu_s": s["ok"] / cpu if cpu else None, "passes": pass_count,
                      "passes_per_s": pass_count / s["span_s"],
                      "pass_wall_ms_median": 1000 * B.median(pass_wall) if pass_wall else None,
                      "client_errors": res["errors"]})
            rounds.append(s)
            B.log("idle serving round %d, %-12s: %6.0f conn/s, hs p50 %.1f ms p99 %.1f ms max %.1f ms, daemon CPU "
                  "%.0f %%, %d passes (%.1f/s)%s" % (
                      rnd, mode, s["conn_per_s"], s["hs_p50_ms"], s["hs_p99_ms"], s["hs_max_ms"],
                      100 * s["daemon_util"], pass_count, s["passes_per_s"],
                      "  ERRORS %d: %s" % (s["errors"], res["errors"][:1]) if s["errors"] else ""))
            time.sleep(0.5)
    r["serving_rounds"] = rounds
    summary = {}
    for mode in ("none", "back_to_back"):
        rows = [x for x in rounds if x["mode"] == mode]
        summary[mode] = {k: B.median(x[k] for x in rows) for k in
                         ("conn_per_s", "hs_p50_ms", "hs_p99_ms", "hs_max_ms", "daemon_util", "conn_per_cpu_s",
                          "passes_per_s")}
        summary[mode]["errors"] = sum(x["errors"] for x in rows)
    paired = [b["conn_per_s"] / a["conn_per_s"] for a, b in
              zip([x for x in rounds if x["mode"] == "none"], [x for x in rounds if x["mode"] == "back_to_back"])]
    summary["ratio"] = summary["back_to_back"]["conn_per_s"] / summary["none"]["conn_per_s"]
    summary["ratio_paired_median"] = B.median(paired)
    summary["ratio_per_round"] = paired
    r["serving"] = summary
    r["rss_kib_end"] = B.rss_kib(daemon.pid)
    daemon.stop()

    # The first pass after a start (every certificate's dates are read) while serving.
    if args.first_under_load:
        config = base_config(work, "idle-first", redis_port, up_port, cold_start.DOMAIN)
        daemon = Daemon(procs, work, "idle-first", config)
        daemon.wait_loaded(len(entries))
        Client(procs, work, "idle-first-warm", daemon.tls_port, names, args.threads, 600, once=True).result()
        time.sleep(1.0)
        client = Client(procs, work, "idle-first-load", daemon.tls_port, names, args.threads, args.window)
        time.sleep(min(2.0, args.window / 3))
        p = daemon.timed_pass()
        res = client.result()
        during = client_stats(res, p["t_patch"], p["t_end"])
        outside = [x for x in res["records"] if x[0] + x[2] < p["t_patch"] or x[0] > p["t_end"]]
        before = client_stats({"start": res["start"], "end": p["t_patch"], "records": outside})
        # Connections in flight at any moment of the pass, and the longest stretch without a completed one.
        overlap = [x for x in res["records"] if x[0] < p["t_end"] and x[0] + x[2] > p["t_patch"]]
        ends = sorted([p["t_patch"], p["t_end"]] + [x[0] + x[2] for x in res["records"]
                                                     if p["t_patch"] <= x[0] + x[2] <= p["t_end"]])
        r["first_pass_under_load"] = {
            "pass_wall_ms": 1000 * p["wall_s"], "pass_cpu_ms": 1000 * p["cpu_s"], "before": before, "during": during,
            "before_total_p99_ms": pct([1000 * x[2] for x in outside if x[0] < p["t_patch"]], 99),
            "overlapping": len(overlap),
            "overlapping_total_max_ms": 1000 * max(x[2] for x in overlap) if overlap else None,
            "overlapping_hs_max_ms": 1000 * max(x[1] or 0 for x in overlap) if overlap else None,
            "completed_during": len(ends) - 2,
            "longest_gap_ms": 1000 * max(b - a for a, b in zip(ends, ends[1:])),
        }
        fl = r["first_pass_under_load"]
        B.log("idle: first pass under load: %.0f ms wall, %.0f ms CPU; before it %.0f conn/s, hs p50 %s max %s ms; "
              "%d connections overlapped the pass, the slowest took %s ms (handshake %s ms); %d completed during it, "
              "longest gap %.0f ms" % (
                  fl["pass_wall_ms"], fl["pass_cpu_ms"], before["conn_per_s"], f1(before["hs_p50_ms"]),
                  f1(before["hs_max_ms"]), fl["overlapping"], f1(fl["overlapping_total_max_ms"]),
                  f1(fl["overlapping_hs_max_ms"]), fl["completed_during"], fl["longest_gap_ms"]))
        daemon.stop()
    procs.stop(redis)
    results["idle"] = r


# -- part 2: a pass renewing 500 due certificates against Pebble -------------------------------------------


def due_entries(n: int, days_old: float = 80.0, days: int = 90) -> list[tuple[bytes, bytes, bytes, bytes]]:
    """n certificates for dNNN.bench.test, issued ``days_old`` days ago by the bench CA (Kong's keys)."""
    from kongacme.storage import keys

    ca = B.load_or_create_ca(B.out_dir("ca"))
    start = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=days_old)
    out = []
    for i in range(n):
        host = due_host(i)
        certified = ca.issue([host], days=days, not_before=start)
        out.append((keys.cert_key(host).encode(), keys.encode_cert_key(certified), keys.renew_config(host).encode(),
                    keys.encode_renew_config(host, certified.not_after.timestamp())))
    return out


def due_host(i: int) -> str:
    return "d%03d.%s" % (i, DUE_DOMAIN)


def served_issuer(port: int, name: str) -> str:
    """The issuer CN of the certificate served for ``name``."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=name) as tls:
            der = tls.getpeercert(binary_form=True)
    attrs = x509.load_der_x509_certificate(der).issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
    return attrs[0].value if attrs else "?"


def part_due(args, procs: B.Processes, work: str, up_port: int, results: dict) -> None:
    import issuance

    dns_port = issuance.start_dns(procs, work)
    http_port = B.free_port()
    pebble = issuance.Pebble(work)
    pebble.start(procs, http_port, dns_port, None)  # inherits this process's core (CLIENT_CPU)
    B.log("due: Pebble %s (httpPort %d, DNS stub %d), affinity %s" % (
        pebble.directory_url, http_port, dns_port, sorted(os.sched_getaffinity(pebble.proc.pid))))
    r: dict = {"pebble_env": pebble.env, "rounds": []}
    names = [due_host(i) for i in range(args.due)]
    background = cold_start.certificates(args.due_background)[1] if args.due_background else []
    r["background_not_due"] = len(background)
    for rnd in range(args.due_rounds):
        t = time.perf_counter()
        entries = due_entries(args.due)
        issue_s = time.perf_counter() - t
        redis_port, redis = cold_start.start_redis(procs, work, "due-%d" % rnd)
        cold_start.fill(redis_port, entries + background)
        config = base_config(work, "due-%d" % rnd, redis_port, up_port, DUE_DOMAIN)
        config["listen"]["http"] = ["tcp:%d:interface=127.0.0.1:backlog=1024" % http_port]
        config["http"] = {"mode": "not_found"}
        config["acme"]["api_uri"] = pebble.directory_url
        if background:  # admitted too, so the pass treats them as managed and admitted, not due
            config["acme"]["domains"] = ["*." + DUE_DOMAIN, "*." + cold_start.DOMAIN]
        config["issuance"] = {"on_demand": False, "ca_bundle": pebble.ca_pem, "challenge_port": http_port,
                              "request_timeout": 30}
        config.setdefault("renewal", {})["max_parallel"] = args.max_parallel
        daemon = Daemon(procs, work, "due-%d" % rnd, config)
        loaded_s = daemon.wait_loaded(len(entries) + len(background))
        B.wait_port(http_port, daemon.proc, 30)
        # Warm-up order: registers the account (not timed).
        code, body = admin(daemon.admin_port, "POST", "/acme", {"host": "warmup." + DUE_DOMAIN}, timeout=120)
        if code != 201:
            raise RuntimeError("warm-up POST /acme: %d %r" % (code, body))
        before_issuer = served_issuer(daemon.tls_port, names[0])
        warm = client_stats(Client(procs, work, "due-%d-warm" % rnd, daemon.tls_port, names, args.threads, 600,
                                   once=True).result())
        time.sleep(0.5)
        # Idle.
        cpu0 = daemon.cpu()
        idle_res = Client(procs, work, "due-%d-idle" % rnd, daemon.tls_port, names, args.threads, args.window).result()
        idle = client_stats(idle_res)
        idle["daemon_cpu_s"] = daemon.cpu() - cpu0
        idle["daemon_util"] = idle["daemon_cpu_s"] / idle["span_s"]
        B.log("due round %d: idle %6.0f conn/s, hs p50 %.1f ms p99 %.1f ms, daemon CPU %.0f %%" % (
            rnd, idle["conn_per_s"], idle["hs_p50_ms"], idle["hs_p99_ms"], 100 * idle["daemon_util"]))
        # The pass, with the client running.
        stop_file = os.path.join(work, "stop")
        client = Client(procs, work, "due-%d-pass" % rnd, daemon.tls_port, names, args.threads,
                        args.pass_timeout + 60, stop_file=stop_file)
        time.sleep(1.0)  # let the client reach its pace
        pebble_cpu0 = B.cpu_seconds_sched(pebble.proc.pid)
        p = daemon.timed_pass(timeout=args.pass_timeout)
        pebble_cpu = B.cpu_seconds_sched(pebble.proc.pid) - pebble_cpu0
        open(stop_file, "w").close()
        pass_res = client.result()
        during = client_stats(pass_res, p["t_patch"], p["t_end"])
        status = daemon.status()["renewal"]
        last = status["last_pass"] or {}
        after_issuer = served_issuer(daemon.tls_port, names[0])
        issuance_stats = (daemon.status().get("issuance") or {}).get("stats") or {}
        row = {
            "round": rnd, "issue_certs_s": issue_s, "loaded_s": loaded_s, "warm": warm, "idle": idle,
            "pass_wall_s": p["wall_s"], "pass_daemon_cpu_s": p["cpu_s"], "pass_pebble_cpu_s": pebble_cpu,
            "checked": last.get("checked"), "renewed": len(last.get("renewed") or ()),
            "failed": last.get("failed"), "skipped": last.get("skipped"),
            "renewals_per_s": len(last.get("renewed") or ()) / p["wall_s"],
            "daemon_cpu_ms_per_renewal": 1000 * p["cpu_s"] / max(1, len(last.get("renewed") or ())),
            # The same, less what the connections served during the pass cost at the idle rate (an estimate).
            "daemon_cpu_ms_per_renewal_net": 1000 * (p["cpu_s"] - during["ok"] * idle["daemon_cpu_s"] / max(1, idle["ok"]))
            / max(1, len(last.get("renewed") or ())),
            "during": during, "ratio": during["conn_per_s"] / idle["conn_per_s"],
            "during_daemon_util": p["cpu_s"] / p["wall_s"],
            "issuer_before": before_issuer, "issuer_after": after_issuer,
            "issuance_stats": issuance_stats, "client_errors": pass_res["errors"],
        }
        r["rounds"].append(row)
        B.log("due round %d: pass %.1f s, %d renewed (%.1f/s), %d failed; during it %6.0f conn/s (%.2f of idle), "
              "hs p50 %.1f ms p99 %.1f ms; daemon CPU %.1f s (%.0f ms/renewal), Pebble CPU %.1f s; served issuer "
              "%r -> %r" % (rnd, p["wall_s"], row["renewed"], row["renewals_per_s"], len(row["failed"] or {}),
                            during["conn_per_s"], row["ratio"], during["hs_p50_ms"], during["hs_p99_ms"],
                            p["cpu_s"], row["daemon_cpu_ms_per_renewal"], pebble_cpu, before_issuer, after_issuer))
        if row["renewed"] != args.due:
            B.log("due round %d: only %d/%d renewed; failed %r" % (rnd, row["renewed"], args.due,
                                                                   list((row["failed"] or {}).items())[:3]))
        daemon.stop()
        procs.stop(redis)
    rows = r["rounds"]
    r["summary"] = {
        "pass_wall_s": B.median(x["pass_wall_s"] for x in rows),
        "renewals_per_s": B.median(x["renewals_per_s"] for x in rows),
        "renewed": [x["renewed"] for x in rows],
        "failed": [len(x["failed"] or {}) for x in rows],
        "idle_conn_per_s": B.median(x["idle"]["conn_per_s"] for x in rows),
        "during_conn_per_s": B.median(x["during"]["conn_per_s"] for x in rows),
        "ratio": B.median(x["ratio"] for x in rows),
        "idle_hs_p50_ms": B.median(x["idle"]["hs_p50_ms"] for x in rows),
        "idle_hs_p99_ms": B.median(x["idle"]["hs_p99_ms"] for x in rows),
        "during_hs_p50_ms": B.median(x["during"]["hs_p50_ms"] for x in rows),
        "during_hs_p99_ms": B.median(x["during"]["hs_p99_ms"] for x in rows),
        "during_hs_max_ms": B.median(x["during"]["hs_max_ms"] for x in rows),
        "daemon_cpu_ms_per_renewal": B.median(x["daemon_cpu_ms_per_renewal"] for x in rows),
        "daemon_cpu_ms_per_renewal_net": B.median(x["daemon_cpu_ms_per_renewal_net"] for x in rows),
        "pebble_cpu_s": B.median(x["pass_pebble_cpu_s"] for x in rows),
        "idle_daemon_util": B.median(x["idle"]["daemon_util"] for x in rows),
        "during_daemon_util": B.median(x["during_daemon_util"] for x in rows),
    }
    results["due"] = r


# -- report -----------------------------------------------------------------------------------------------


def f1(v) -> str:
    return "-" if v is None else "%.1f" % v


def report(args, results: dict) -> str:
    lines = []
    if "idle" in results:
        r = results["idle"]
        lines += [
            "Renewal pass, %d certificates, none due (daemon on core %s; PATCH /acme -> log line):" % (
                r["certs"], B.SERVER_CPU),
            "",
            "| pass | wall | daemon CPU | per certificate (CPU) |",
            "|---|---:|---:|---:|",
            "| first after start | %s ms | %s ms | %.2f µs |" % (f1(r["first_pass"]["wall_ms"]),
                                                             f1(r["first_pass"]["cpu_ms"]),
                                                             1000 * r["first_pass"]["cpu_ms"] / r["certs"]),
            "| later (median of %d; max wall %s ms) | %s ms | %s ms | %.2f µs |" % (
                args.passes, f1(r["later_passes"]["wall_ms_max"]), f1(r["later_passes"]["wall_ms"]),
                f1(r["later_passes"]["cpu_ms"]), 1000 * r["later_passes"]["cpu_ms"] / r["certs"]),
            "| for scale: GET /nope (404) on the Admin API | %s ms | %s ms | |" % (
                f1(r["control"]["wall_ms"]), f1(r["control"]["cpu_ms"])),
            "",
            "Serving during passes (client: %d threads on core %s, new TLS 1.3 connection + GET per request over "
            "%d names, %.0f s windows, medians of %d alternating rounds):" % (
                args.threads, B.CLIENT_CPU, args.serve_names, args.window, args.rounds),
            "",
            "| passes | conn/s | hs p50 | hs p99 | hs max | daemon CPU | conn per daemon CPU-s | passes/s | errors |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        s = r["serving"]
        for mode, label in (("none", "none"), ("back_to_back", "back to back")):
            m = s[mode]
            lines.append("| %s | %.0f | %s ms | %s ms | %s ms | %.0f %% | %.0f | %.1f | %d |" % (
                label, m["conn_per_s"], f1(m["hs_p50_ms"]), f1(m["hs_p99_ms"]), f1(m["hs_max_ms"]),
                100 * m["daemon_util"], m["conn_per_cpu_s"], m["passes_per_s"], m["errors"]))
        lines += ["", "conn/s with passes back to back / without: %.2f (median of per-round ratios %.2f; rounds: %s)" % (
            s["ratio"], s["ratio_paired_median"], ", ".join("%.2f" % x for x in s["ratio_per_round"]))]
        fl = r.get("first_pass_under_load")
        if fl:
            lines += [
                "",
                "First pass after a start, while the client runs (one run; the pass took %.0f ms wall, %.0f ms "
                "daemon CPU):" % (fl["pass_wall_ms"], fl["pass_cpu_ms"]),
                "",
                "| before the pass: conn/s | hs p50 / p99 | connection (connect -> response) p99 | connections "
                "overlapping the pass | slowest of them (its handshake) | completed during the pass | longest "
                "stretch with none completed |",
                "|---:|---:|---:|---:|---:|---:|---:|",
                "| %.0f | %s / %s ms | %s ms | %d | %s ms (%s ms) | %d | %.0f ms |" % (
                    fl["before"]["conn_per_s"], f1(fl["before"]["hs_p50_ms"]), f1(fl["before"]["hs_p99_ms"]),
                    f1(fl["before_total_p99_ms"]), fl["overlapping"], f1(fl["overlapping_total_max_ms"]),
                    f1(fl["overlapping_hs_max_ms"]), fl["completed_during"], fl["longest_gap_ms"]),
            ]
    if "due" in results:
        d = results["due"]["summary"]
        lines += [
            "",
            "Renewal pass of %d due certificates%s against Pebble (renewal.max_parallel %d; daemon on core %s, "
            "Pebble, Redis, upstream and client on core %s; medians of %d rounds):" % (
                args.due, " (+ %d not due)" % args.due_background if args.due_background else "",
                args.max_parallel, B.SERVER_CPU, B.CLIENT_CPU, args.due_rounds),
            "",
            "| pass duration | renewed | failed | renewals/s | daemon CPU in the pass per renewal: all / net of "
            "serving (est.) | Pebble CPU in the pass |",
            "|---:|---:|---:|---:|---:|---:|",
            "| %.1f s | %s | %s | %.1f | %.0f ms / %.0f ms | %.1f s |" % (
                d["pass_wall_s"], "/".join(map(str, d["renewed"])), "/".join(map(str, d["failed"])),
                d["renewals_per_s"], d["daemon_cpu_ms_per_renewal"], d["daemon_cpu_ms_per_renewal_net"],
                d["pebble_cpu_s"]),
            "",
            "| daemon | conn/s | hs p50 | hs p99 | daemon CPU |",  # hs: connect -> handshake done
            "|---|---:|---:|---:|---:|",
            "| idle | %.0f | %s ms | %s ms | %.0f %% |" % (d["idle_conn_per_s"], f1(d["idle_hs_p50_ms"]),
                                                      f1(d["idle_hs_p99_ms"]), 100 * d["idle_daemon_util"]),
            "| during the pass | %.0f | %s ms | %s ms | %.0f %% |" % (
                d["during_conn_per_s"], f1(d["during_hs_p50_ms"]), f1(d["during_hs_p99_ms"]),
                100 * d["during_daemon_util"]),
            "",
            "conn/s during the pass / idle: %.2f (rounds: %s)" % (
                d["ratio"], ", ".join("%.2f" % x["ratio"] for x in results["due"]["rounds"])),
        ]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.client_child:
        client_child(args.client_child)
        return 0
    # This script, and everything it starts without an explicit core, runs on
    # the client core; the daemon is started with taskset on the server core.
    os.sched_setaffinity(0, {int(B.CLIENT_CPU)})
    started = time.monotonic()
    work = B.out_dir("renewal")
    results: dict = {"args": vars(args), "machine": B.machine_info(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                     "cores": {"daemon": B.SERVER_CPU, "client_pebble_redis_upstream": B.CLIENT_CPU}}
    B.log("machine:", results["machine"]["cpu_model"], "load", results["machine"]["loadavg_at_start"])
    with B.Processes() as procs:
        up_port = B.free_port()
        B.start_haproxy(procs, "renewal-upstream", B.haproxy_upstream_config(up_port), up_port, B.CLIENT_CPU)
        if args.part in ("idle", "both"):
            part_idle(args, procs, work, up_port, results)
        if args.part in ("due", "both"):
            part_due(args, procs, work, up_port, results)
    results["wall_s"] = time.monotonic() - started
    results["loadavg_at_end"] = open("/proc/loadavg").read().split()[:3]
    path = B.save_json(args.json, results)
    print(report(args, results))
    B.log("raw numbers: %s; logs: %s (%.0f s)" % (path, work, results["wall_s"]))
    ok = True
    if "due" in results:
        ok = all(x["renewed"] == args.due and not x["failed"] for x in results["due"]["rounds"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
