#!/usr/bin/env python3
"""
Issue 11: a master and N worker processes. Measured side by side in one run,
interleaved rounds, medians (each part can run alone with --parts):

cpu
    Full TLS 1.3 handshakes per server CPU-second, ``workers: 2`` against
    ``workers: 1``: both daemons pinned to core 0 (a worker inherits the
    master's affinity), h2load and the upstream on core 1, as in
    handshakes.py. Server CPU = master + every worker (+ reaped children),
    from /proc, read once the whole tree is idle again. Also: the share of
    connections each worker took (its handshake counters in /metrics,
    ``kongacme_worker_tls_handshakes_total{worker}``, every outcome).
wall
    Wall-clock handshakes/s of ``workers: 2``, ``workers: 1`` and HAProxy
    ``nbthread 2``, nothing pinned: the servers, h2load and the upstream
    share the 2 cores. The CPU each used is recorded, so the summary can say
    what N cores would give (on paper).
balance
    How the kernel spreads a burst over two processes: two tiny Twisted TLS
    servers accepting on ONE inherited listening socket (what kongacme's
    workers do) against two with their own ``SO_REUSEPORT`` sockets on one
    port; h2load -n 4000 -c 4000 per round, accepts counted per process.
propagation
    From an order finishing in the master to every worker serving the
    certificate (``workers: 2``, Pebble, ``POST /acme`` per name). Timed
    inside the processes by a bench-only ``sitecustomize`` (on PYTHONPATH,
    inherited by the workers) wrapping ``CertificateCache.put``: the
    master's put is the order's end (kongacme/issuance/manager.py puts the
    issued certificate in its cache first), a worker's returning put is the
    moment its handshakes get the certificate. One clock (CLOCK_REALTIME,
    one machine). Checked from outside by verified handshakes right after.
memory
    Idle RSS and PSS (/proc/<pid>/smaps_rollup) of the master, its worker
    zygote, each worker and the total, ``workers: N`` (--memory-workers,
    workers forked by the zygote or exec'd: --worker-start) against
    ``workers: 1``, with 0, 1,000 and --certs (default 100,000)
    certificates stored in Redis (ECDSA P-256, generated once into
    bench/out/cold-start/ by cold_start.py's generator); "idle" = the
    tree's CPU stopped growing after the load.
miss
    With --miss-certs (100,000) stored and one of two workers stopped: the
    extra latency of a handshake for a name the serving worker does not
    hold yet (it fetches it from the master) over one for a name it holds.

Every measured run starts once the 1-minute load average is below 0.8 (at
most --max-load-wait s, then noted). Raw numbers: bench/out/workers.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import signal
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as B  # noqa: E402

HERE = os.path.abspath(__file__)
HOST = "bench.test"
PARTS = ("cpu", "wall", "balance", "propagation", "memory", "miss")
STOPPED = "workers-2-one-stopped"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", default=",".join(PARTS), help="comma list of %s (default all)" % ", ".join(PARTS))
    p.add_argument("-n", "--connections", type=int, default=4000,
                   help="connections per h2load run (= -n = -c: one new TLS connection each; default 4000)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds per part (default 5)")
    p.add_argument("--warmup", type=int, default=500, help="warm-up connections per server (default 500)")
    p.add_argument("--names", type=int, default=20, help="propagation: names ordered one after another (default 20)")
    p.add_argument("--certs", default="0,1000,100000",
                   help="memory: certificate counts stored in Redis (default 0,1000,100000)")
    p.add_argument("--touch", type=int, default=1000,
                   help="memory: then handshake this many names twice and measure again (default 1000; 0: no)")
    p.add_argument("--touch-passes", type=int, default=2,
                   help="memory: handshakes per name in use (default 2; more so that every worker holds them)")
    p.add_argument("--memory-workers", default="2",
                   help="memory: worker counts besides the single process (default 2; '2,4' gives the cost of an "
                        "extra worker)")
    p.add_argument("--worker-start", default="fork",
                   help="memory, miss: how workers start, comma list of fork (the zygote) and exec "
                        "(KONGACME_WORKER_START; default fork)")
    p.add_argument("--miss-certs", type=int, default=100000, help="miss: certificates stored (default 100000)")
    p.add_argument("--miss-names", type=int, default=300, help="miss: names handshaken for (default 300)")
    p.add_argument("--max-load", type=float, default=0.8, help="wait for a 1-minute load average below this")
    p.add_argument("--max-load-wait", type=float, default=60.0,
                   help="...for at most this many seconds before each measured run, then measure and note it")
    p.add_argument("--worker-gc-diagnostic", action="store_true",
                   help="cpu/wall: start the daemons with the master's GC thresholds in every process (a "
                        "bench-only sitecustomize), to see what the workers' default thresholds cost")
    p.add_argument("--tree", default=None,
                   help="memory: directory holding the kongacme package the daemon runs (default: this checkout; "
                        "e.g. an export of an older commit, to compare in one run)")
    p.add_argument("--json", default="workers.json", help="result file under bench/out/")
    p.add_argument("--balance-child", nargs=5, metavar=("MODE", "WHERE", "COUNTS", "CERT", "KEY"),
                   help=argparse.SUPPRESS)
    return p.parse_args(argv)


# -- shared -------------------------------------------------------------------------------


def quiet(args) -> dict:
    return B.wait_for_quiet_machine(args.max_load, args.max_load_wait)


def write_daemon_config(work: str, tag: str, tls_port: int, admin_port: int, workers: int, leaf: dict,
                        up_port: int) -> str:
    """handshakes.py's daemon (one static certificate, one route) plus ``workers`` and an Admin listener."""
    import yaml

    directory = B.out_dir("workers", tag)
    path = B.kongacme_config(
        directory, tls_port,
        certificates=[{"cert": leaf["cert"], "key": leaf["key"]}],
        routes=[{"hosts": [HOST], "upstream": "127.0.0.1:%d" % up_port, "alpn": ["h2", "http/1.1"]}],
        fallback=leaf,
    )
    with open(path) as f:
        config = yaml.safe_load(f)
    config["workers"] = workers
    config["listen"]["admin"] = ["tcp:%d:interface=127.0.0.1" % admin_port]
    with open(path, "w") as f:
        yaml.safe_dump(config, f, sort_keys=False)
    return path


class Daemon:
    """A ``twistd -n kongacme`` with ``workers`` and an Admin listener."""

    def __init__(self, procs: B.Processes, name: str, config: str, tls_port: int, admin_port: int, workers: int,
                 cpu: str | None, env: dict | None = None, timeout: float = 120.0, cwd: str = B.REPO):
        self.name, self.tls_port, self.admin_port, self.workers = name, tls_port, admin_port, workers
        started = time.monotonic()
        self.proc = procs.start(name, B.kongacme_argv(config), cpu=cpu, cwd=cwd, env=env or B.kongacme_env())
        B.wait_port(admin_port, self.proc, timeout)
        if workers > 1:
            self.wait_workers(timeout)
        B.wait_port(tls_port, self.proc, timeout)
        self.start_s = time.monotonic() - started

    @property
    def pid(self) -> int:
        return self.proc.pid

    def get(self, path: str, timeout: float = 30) -> str:
        import requests

        return requests.get("http://127.0.0.1:%d%s" % (self.admin_port, path), timeout=timeout).text

    def worker_pids(self) -> list[int]:
        """The workers (children of the master, or of its zygote), not the zygote."""
        return [p for p in B.descendants(self.pid) if p != self.pid and not is_zygote(p, self.pid)]

    def zygote_pids(self) -> list[int]:
        """The master's worker zygote (kongacme.workers.zygote), if it forks the workers."""
        return [p for p in B.descendants(self.pid) if p != self.pid and is_zygote(p, self.pid)]


    def per_worker(self) -> dict[str, dict]:
        """Per worker (slot): connections handshaken (every outcome) and certificates, from /metrics."""
        out: dict[str, dict] = {}
        for line in self.get("/metrics").splitlines():
            m = re.match(r'kongacme_worker_tls_handshakes_total\{(.*)\} ([\d.e+]+)$', line)
            if m:
                slot = re.search(r'worker="(\d+)"', m.group(1)).group(1)
                out.setdefault(slot, {"handshakes": 0.0})["handshakes"] += float(m.group(2))
            m = re.match(r'kongacme_worker_certificate_cache_entries\{worker="(\d+)"\} ([\d.e+]+)$', line)
            if m:
                out.setdefault(m.group(1), {"handshakes": 0.0})["certificates"] = float(m.group(2))
        return out

    def wait_workers(self, timeout: float) -> None:
        """Until every worker has reported its counters once (it accepts before its first report)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("%s exited:\n%s" % (self.name, B.tail(self.proc.bench_log)))
            try:
                if len(self.per_worker()) >= self.workers:
                    return
            except Exception:  # noqa: BLE001 - not up yet
                pass
            time.sleep(0.2)
        raise RuntimeError("%s: workers did not report:\n%s" % (self.name, B.tail(self.proc.bench_log)))

    def counted(self, before: dict, expected: int, timeout: float = 5.0) -> dict[str, float]:
        """Connections per worker since ``before``, once the reports add up to ``expected`` (1 s reports)."""
        deadline = time.monotonic() + timeout
        while True:
            now = self.per_worker()
            delta = {slot: now[slot]["handshakes"] - before.get(slot, {}).get("handshakes", 0.0) for slot in now}
            if sum(delta.values()) >= expected or time.monotonic() > deadline:
                return delta
            time.sleep(0.25)


def is_zygote(pid: int, master: int) -> bool:
    """
    Whether ``pid`` is ``master``'s worker zygote (``python -m
    kongacme.workers.zygote``, a child of the master; the workers it forks
    keep its command line but are its children).
    """
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            command = f.read()
        with open("/proc/%d/stat" % pid) as f:
            parent = int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return False
    return parent == master and b"kongacme.workers.zygote" in command


def gc_diagnostic_env() -> dict:
    """
    ``--worker-gc-diagnostic``: every Python process of the daemon starts
    with the collector thresholds the master sets itself
    (kongacme.service.tune_gc), so workers get them too. A diagnostic, not
    what the code does.
    """
    hook = B.out_dir("workers", "gc-hook")
    with open(os.path.join(hook, "sitecustomize.py"), "w") as f:
        f.write("import gc\ngc.set_threshold(20_000, 50, 100)\n")
    env = B.kongacme_env()
    env["PYTHONPATH"] = hook + os.pathsep + B.REPO
    return env


def children_rusage_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def h2load_run(port: int, n: int, cpu: str) -> tuple[dict, float]:
    """One h2load burst; also the CPU h2load itself used (it is our reaped child)."""
    c0 = children_rusage_cpu()
    r = B.run_h2load(HOST, port, n, n, cpu=cpu)
    return r, children_rusage_cpu() - c0


def setup_tls(work_name: str) -> tuple[dict, object]:
    ca = B.load_or_create_ca(B.out_dir("ca"))
    leaf = B.issue_files(ca, B.out_dir("workers", work_name), "leaf", [HOST])
    return leaf, ca


# -- cpu: handshakes per server CPU-second, pinned ----------------------------------------


def measure_round(server: dict, args, results_runs: list, part: str, rnd: int, client_cpu: str,
                  up_pid: int, note: dict) -> dict:
    pid, port, daemon = server["pid"], server["port"], server.get("daemon")
    c0, _ = B.cpu_when_idle(pid)
    own0 = B.cpu_seconds(pid)
    up0 = B.cpu_seconds(up_pid)
    before = daemon.per_worker() if daemon is not None and daemon.workers > 1 else None
    r, client = h2load_run(port, args.connections, client_cpu)
    c1, idle = B.cpu_when_idle(pid)
    cpu = c1 - c0
    ok = r["succeeded"]
    run = {
        "part": part, "round": rnd, "server": server["name"], "handshakes": ok,
        "failed": r.get("failed", 0) + r.get("errored", 0),
        "server_cpu_s": cpu, "master_own_cpu_s": B.cpu_seconds(pid) - own0 if daemon is not None else None,
        "hs_per_cpu_s": ok / cpu if cpu else float("nan"), "hs_per_s": ok / r["finished_s"],
        "client_cpu_s": client, "upstream_cpu_s": B.cpu_seconds(up_pid) - up0,
        "idle_wait_s": round(idle["waited_s"], 2), "idle_reached": idle["idle"], "quiet_machine": note,
        "h2load": r["argv"],
    }
    if before is not None:
        per = daemon.counted(before, ok)
        total = sum(per.values()) or 1.0
        run["per_worker"] = per
        run["worker_shares"] = {slot: v / total for slot, v in sorted(per.items())}
    results_runs.append(run)
    shares = " ".join("w%s %.0f%%" % (s, 100 * v) for s, v in run.get("worker_shares", {}).items())
    B.log("%s round %d %-12s %5d hs  server cpu %.2fs  %5.0f hs/cpu-s  %5.0f hs/s  client cpu %.2fs  %s%s" % (
        part, rnd, server["name"], ok, cpu, run["hs_per_cpu_s"], run["hs_per_s"], client, shares,
        "  (%d failed)" % run["failed"] if run["failed"] else ""))
    return run


def part_handshakes(args, results: dict, part: str) -> None:
    """``cpu`` (pinned: servers core 0, client core 1) or ``wall`` (nothing pinned, HAProxy nbthread 2 too)."""
    pinned = part == "cpu"
    server_cpu, client_cpu = (B.SERVER_CPU, B.CLIENT_CPU) if pinned else (None, "0,1")
    leaf, _ = setup_tls("tls")
    runs: list = []
    with B.Processes() as procs:
        up_port = B.free_port()
        up = B.start_haproxy(procs, "wk-upstream-" + part, B.haproxy_upstream_config(up_port), up_port,
                             B.CLIENT_CPU if pinned else "0,1")
        servers = []
        # Pinned, a third daemon: workers: 2 with one worker stopped (SIGSTOP:
        # it never accepts, the other takes every connection): the worker's
        # code path alone on the core, apart from two processes sharing it.
        for workers, name in ((1, "workers-1"), (2, "workers-2")) + (((2, STOPPED),) if pinned else ()):
            tls_port, admin_port = B.free_port(), B.free_port()
            cfg = write_daemon_config(B.out_dir("workers"), "%s-%s" % (part, name), tls_port, admin_port, workers,
                                      leaf, up_port)
            daemon = Daemon(procs, "wk-%s-%s" % (part, name), cfg, tls_port, admin_port, workers, server_cpu,
                            env=gc_diagnostic_env() if args.worker_gc_diagnostic else None)
            servers.append({"name": name, "pid": daemon.pid, "port": tls_port, "daemon": daemon})
            if name == STOPPED:
                servers[-1]["stopped"] = daemon.worker_pids()[-1]
                os.kill(servers[-1]["stopped"], signal.SIGSTOP)
        if not pinned:
            h_port = B.free_port()
            proc = B.start_haproxy(procs, "wk-haproxy-nbthread2",
                                   B.haproxy_tls_config(h_port, leaf["pem"], up_port, threads=2), h_port, "0,1")
            servers.append({"name": "haproxy-nbthread2", "pid": proc.pid, "port": h_port})
        for server in servers:
            if args.warmup:
                B.run_h2load(HOST, server["port"], args.warmup, args.warmup, cpu=client_cpu)
        for rnd in range(args.rounds):
            note = quiet(args)
            order = servers[rnd % len(servers):] + servers[:rnd % len(servers)]
            for server in order:
                measure_round(server, args, runs, part, rnd, client_cpu, up.pid, note)
        for server in servers:
            if "stopped" in server:
                os.kill(server["stopped"], signal.SIGCONT)  # lets it drain and exit with its master
            if "daemon" in server:
                results.setdefault("restarts", {})[part + ":" + server["name"]] = json.loads(
                    server["daemon"].get("/status"))["workers"]
    results[part] = {"runs": runs, "summary": summarize_handshakes(runs)}


def summarize_handshakes(runs: list) -> dict:
    out: dict = {}
    for name in sorted({r["server"] for r in runs}):
        mine = [r for r in runs if r["server"] == name]
        s = {
            "hs_per_cpu_s": B.median(r["hs_per_cpu_s"] for r in mine),
            "hs_per_s": B.median(r["hs_per_s"] for r in mine),
            "server_cpu_s": B.median(r["server_cpu_s"] for r in mine),
            "client_cpu_s": B.median(r["client_cpu_s"] for r in mine),
            "upstream_cpu_s": B.median(r["upstream_cpu_s"] for r in mine),
            "all_hs_per_cpu_s": [round(r["hs_per_cpu_s"]) for r in mine],
            "all_hs_per_s": [round(r["hs_per_s"]) for r in mine],
            "failed": sum(r["failed"] for r in mine),
        }
        if mine and mine[0].get("master_own_cpu_s") is not None:
            s["master_own_cpu_share"] = B.median(r["master_own_cpu_s"] / r["server_cpu_s"] for r in mine)
        shares = [r["worker_shares"] for r in mine if "worker_shares" in r]
        if shares:
            s["worker_shares_all"] = [[round(v, 3) for v in sh.values()] for sh in shares]
            s["worker_share_min"] = min(min(sh.values()) for sh in shares)
            s["worker_share_max"] = max(max(sh.values()) for sh in shares)
        out[name] = s
    def paired(name: str) -> float | None:
        """Median over rounds of ``name``'s hs/CPU-s over workers: 1's in the same round."""
        ratios = []
        for rnd in sorted({r["round"] for r in runs}):
            one = [r for r in runs if r["round"] == rnd and r["server"] == "workers-1"]
            other = [r for r in runs if r["round"] == rnd and r["server"] == name]
            if one and other:
                ratios.append(other[0]["hs_per_cpu_s"] / one[0]["hs_per_cpu_s"])
        return B.median(ratios) if ratios else None

    if "workers-1" in out and "workers-2" in out:
        out["ratio_w2_w1_hs_per_cpu_s"] = out["workers-2"]["hs_per_cpu_s"] / out["workers-1"]["hs_per_cpu_s"]
        out["ratio_w2_w1_hs_per_cpu_s_paired"] = paired("workers-2")
        out["ratio_w2_w1_hs_per_s"] = out["workers-2"]["hs_per_s"] / out["workers-1"]["hs_per_s"]
    if "workers-1" in out and STOPPED in out:
        out["ratio_one_worker_w1_hs_per_cpu_s"] = out[STOPPED]["hs_per_cpu_s"] / out["workers-1"]["hs_per_cpu_s"]
        out["ratio_one_worker_w1_hs_per_cpu_s_paired"] = paired(STOPPED)
    if "haproxy-nbthread2" in out and "workers-2" in out:
        out["ratio_w2_haproxy_hs_per_s"] = out["workers-2"]["hs_per_s"] / out["haproxy-nbthread2"]["hs_per_s"]
        out["ratio_w2_haproxy_hs_per_cpu_s"] = (out["workers-2"]["hs_per_cpu_s"]
                                                / out["haproxy-nbthread2"]["hs_per_cpu_s"])
    return out


# -- balance: one inherited socket vs SO_REUSEPORT ----------------------------------------


def balance_child(mode: str, where: str, counts: str, cert: str, key: str) -> None:
    """
    A tiny Twisted TLS server counting accepted connections; answers any
    request with 200 and closes. ``inherit``: accept on inherited fd
    ``where``; ``reuseport``: bind its own SO_REUSEPORT socket on port ``where``.
    """
    from twisted.internet import protocol, reactor, ssl
    from twisted.internet.task import LoopingCall
    from twisted.protocols.tls import TLSMemoryBIOFactory

    with open(cert, "rb") as f:
        cert_pem = f.read()
    with open(key, "rb") as f:
        key_pem = f.read()
    private = ssl.PrivateCertificate.loadPEM(cert_pem + key_pem)
    options = ssl.CertificateOptions(privateKey=private.privateKey.original, certificate=private.original,
                                     acceptableProtocols=[b"http/1.1"])
    accepted = [0]

    class Answer(protocol.Protocol):
        def connectionMade(self):
            accepted[0] += 1

        def dataReceived(self, data):
            if b"\r\n\r\n" in data:
                self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
                self.transport.loseConnection()

    factory = TLSMemoryBIOFactory(options, False, protocol.Factory.forProtocol(Answer))
    if mode == "inherit":
        fd = int(where)
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", int(where)))
        sock.listen(4096)
        sock.setblocking(False)
        fd = sock.detach()
    reactor.adoptStreamPort(fd, socket.AF_INET, factory)
    os.close(fd)
    written = [-1]

    def write() -> None:
        if accepted[0] != written[0]:
            with open(counts + ".tmp", "w") as f:
                f.write(str(accepted[0]))
            os.rename(counts + ".tmp", counts)
            written[0] = accepted[0]

    LoopingCall(write).start(0.2)
    reactor.run()


def part_balance(args, results: dict) -> None:
    leaf, _ = setup_tls("tls")
    work = B.out_dir("workers", "balance")
    runs: list = []
    with B.Processes() as procs:
        groups: dict[str, dict] = {}
        # One listening socket, inherited by two processes (kongacme's workers).
        inherit_port = B.free_port()
        lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lsock.bind(("127.0.0.1", inherit_port))
        lsock.listen(4096)
        # Non-blocking, as Twisted's own listening sockets (the master's): a
        # process woken with its sibling must not block in accept().
        lsock.setblocking(False)
        reuse_port = B.free_port()
        for mode, port in (("inherit", inherit_port), ("reuseport", reuse_port)):
            members = []
            for i in (1, 2):
                counts = os.path.join(work, "%s-%d.count" % (mode, i))
                if os.path.exists(counts):
                    os.remove(counts)
                where = str(lsock.fileno()) if mode == "inherit" else str(port)
                proc = procs.start("wk-balance-%s-%d" % (mode, i),
                                   [sys.executable, HERE, "--balance-child", mode, where, counts, leaf["cert"],
                                    leaf["key"]],
                                   env=B.kongacme_env(), pass_fds=(lsock.fileno(),) if mode == "inherit" else ())
                members.append({"proc": proc, "counts": counts})
            groups[mode] = {"port": port, "members": members}
        lsock.close()  # the children hold it
        deadline = time.monotonic() + 60
        for group in groups.values():
            for m in group["members"]:
                while not os.path.exists(m["counts"]):
                    if m["proc"].poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError("balance child did not start:\n" + B.tail(m["proc"].bench_log))
                    time.sleep(0.05)
        if args.warmup:
            for group in groups.values():
                B.run_h2load(HOST, group["port"], args.warmup, args.warmup, cpu="0,1")

        def count(member) -> int:
            with open(member["counts"]) as f:
                return int(f.read())

        for rnd in range(args.rounds):
            note = quiet(args)
            modes = ["inherit", "reuseport"] if rnd % 2 == 0 else ["reuseport", "inherit"]
            for mode in modes:
                group = groups[mode]
                before = [count(m) for m in group["members"]]
                r, client = h2load_run(group["port"], args.connections, "0,1")
                for m in group["members"]:
                    B.wait_idle(m["proc"].pid)
                time.sleep(0.3)  # the count files are written every 0.2 s
                got = [count(m) - b for m, b in zip(group["members"], before)]
                total = sum(got) or 1
                run = {"round": rnd, "mode": mode, "accepted": got, "share_1": got[0] / total,
                       "max_share": max(got) / total, "hs_per_s": r["succeeded"] / r["finished_s"],
                       "succeeded": r["succeeded"], "failed": r.get("failed", 0) + r.get("errored", 0),
                       "quiet_machine": note}
                runs.append(run)
                B.log("balance round %d %-9s accepted %s (%.1f%% / %.1f%%)  %4.0f hs/s" % (
                    rnd, mode, got, 100 * got[0] / total, 100 * got[1] / total, run["hs_per_s"]))
    summary = {}
    for mode in ("inherit", "reuseport"):
        mine = [r for r in runs if r["mode"] == mode]
        summary[mode] = {
            "share_1_all": [round(r["share_1"], 3) for r in mine],
            "max_share_median": B.median(r["max_share"] for r in mine),
            "max_share_worst": max(r["max_share"] for r in mine),
            "hs_per_s": B.median(r["hs_per_s"] for r in mine),
        }
    results["balance"] = {"runs": runs, "summary": summary}


# -- propagation: order finished in the master -> served by every worker -------------------

SITECUSTOMIZE = """\
# bench/workers.py, propagation part only (on PYTHONPATH of the daemon and its workers): times, to
# KONGACME_BENCH_PUTLOG/put-<pid>.log, the master cache's put (an order's end) and, in a worker, the
# arrival of CertificatesChanged and each FetchCertificates answer stored in its cache (or name
# replaced from the notice).
import os as _os
_dir = _os.environ.get("KONGACME_BENCH_PUTLOG")


def _wrap(cls, method, kind, names_of):
    import time

    original = getattr(cls, method)

    def timed(self, *args, **kwargs):
        entered = time.time()
        result = original(self, *args, **kwargs)
        left = time.time()
        try:
            names = names_of(self, args, kwargs)
        except Exception:
            names = ["?"]
        with open(_os.path.join(_dir, "put-%d.log" % _os.getpid()), "a") as f:
            f.write("%s %.6f %.6f %s\\n" % (kind, entered, left, ",".join(names) or "-"))
        return result

    setattr(cls, method, timed)


if _dir:
    try:
        from kongacme.tls import cache as _cache
        _wrap(_cache.CertificateCache, "put", "put",
              lambda self, a, kw: list(a[1] if len(a) > 1 and a[1] is not None else kw.get("names") or a[0].names))
    except Exception:
        pass
    try:
        from kongacme.workers import certcache as _wcache
        _wrap(_wcache.WorkerCertificateCache, "answer", "answer",
              lambda self, a, kw: [n for e in a[0] for n in e["names"]])
        _wrap(_wcache.WorkerCertificateCache, "changed", "changed", lambda self, a, kw: list(a[0]))
    except Exception:
        pass
    try:
        # A name held replaced from the notice itself (no fetch).
        _wrap(_wcache.WorkerCertificateCache, "_replace", "replaced", lambda self, a, kw: [a[0]])
    except Exception:
        pass
"""


def read_putlogs(directory: str) -> dict[int, list[tuple[str, float, float, list[str]]]]:
    """pid -> [(kind, entered, left, names)] from the sitecustomize's files."""
    out: dict[int, list] = {}
    for name in os.listdir(directory):
        m = re.match(r"put-(\d+)\.log$", name)
        if not m:
            continue
        with open(os.path.join(directory, name)) as f:
            for line in f:
                kind, entered, left, names = line.split(" ", 3)
                out.setdefault(int(m.group(1)), []).append(
                    (kind, float(entered), float(left), names.strip().split(",")))
    return out


def served_fingerprint(port: int, name: str) -> str | None:
    """SHA-256 of the leaf a new unverified TLS connection with SNI ``name`` gets, or None."""
    import hashlib
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
            with ctx.wrap_socket(raw, server_hostname=name) as tls:
                return hashlib.sha256(tls.getpeercert(binary_form=True)).hexdigest()[:16]
    except (OSError, ssl.SSLError):
        return None


def in_parallel(fn, items: list, threads: int = 4) -> list:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(fn, items))


def part_propagation(args, results: dict) -> None:
    """
    Per name: ``POST /acme`` issues it; handshakes until both workers hold
    it (each fetches it from the master on its first handshake for it);
    then ``POST /acme`` again (a forced re-issue, as a renewal): the master
    puts the new certificate in its cache and tells the workers
    (CertificatesChanged, carrying the new certificate), each replaces the
    name it holds from the notice (older code: drops it and fetches it
    again). Timed: the master's put -> each worker's stored certificate
    (notice or fetch answer), from the sitecustomize.
    """
    import requests
    import yaml

    import issuance as I

    work = B.out_dir("workers", "propagation")
    hook = B.out_dir("workers", "propagation", "hook")
    putlog = B.out_dir("workers", "propagation", "putlog")
    for name in os.listdir(putlog):
        os.remove(os.path.join(putlog, name))
    with open(os.path.join(hook, "sitecustomize.py"), "w") as f:
        f.write(SITECUSTOMIZE)
    names = ["p%03d-%d.%s" % (i, int(time.time()), I.DOMAIN) for i in range(args.names)]
    runs: list = []
    with B.Processes() as procs:
        dns_port = I.start_dns(procs, work)
        pebble = I.Pebble(work)
        http_port = B.free_port()
        pebble.start(procs, http_port, dns_port, nonce_reject=0)
        template = I.Daemon("wk-propagation", work, pebble, http_port, handshake_wait=30, orders_per_minute=1000,
                            max_orders_in_flight=10, log_level="warn")
        with open(template.config_path) as f:
            config = yaml.safe_load(f)
        config["workers"] = 2
        with open(template.config_path, "w") as f:
            yaml.safe_dump(config, f, sort_keys=False)
        env = B.kongacme_env()
        env["PYTHONPATH"] = hook + os.pathsep + B.REPO
        env["KONGACME_BENCH_PUTLOG"] = putlog
        daemon = Daemon(procs, "wk-propagation", template.config_path, template.tls_port, template.admin_port, 2,
                        None, env=env)
        workers = daemon.worker_pids()
        post_url = "http://127.0.0.1:%d/acme" % daemon.admin_port
        results.setdefault("propagation", {})["quiet_machine"] = quiet(args)

        def holders(name: str) -> set[int]:
            puts = read_putlogs(putlog)
            return {pid for pid in workers for kind, _, _, ns in puts.get(pid, []) if kind == "answer" and name in ns}

        for name in names:
            run: dict = {"name": name}
            first = requests.post(post_url, json={"host": name}, timeout=120)
            run["issue_status"] = first.status_code
            tries = 0
            while holders(name) != set(workers) and tries < 64:
                in_parallel(lambda _: served_fingerprint(daemon.tls_port, name), list(range(4)))
                tries += 4
            run["priming_handshakes"] = tries
            run["held_by_both"] = holders(name) == set(workers)
            old = served_fingerprint(daemon.tls_port, name)
            run["reissue_posted"] = time.time()
            again = requests.post(post_url, json={"host": name}, timeout=120)
            run["reissue_answered"] = time.time()
            run["reissue_status"] = again.status_code
            after = in_parallel(lambda _: served_fingerprint(daemon.tls_port, name), list(range(4)))
            run["new_certificate_right_after"] = sum(1 for f in after if f is not None and f != old)
            runs.append(run)
            if again.status_code != 201 or first.status_code != 201:
                B.log("POST /acme %s: %s %s / %s %s" % (name, first.status_code, first.text[:200],
                                                        again.status_code, again.text[:200]))
            time.sleep(0.2)
        master = daemon.pid
    puts = read_putlogs(putlog)
    for run in runs:
        name, since = run["name"], run["reissue_posted"]
        masters = [e for k, e, _, ns in puts.get(master, []) if k == "put" and name in ns and e >= since]
        if not masters:
            continue
        t0 = min(masters)
        run["master_put"] = t0
        run["worker_told_ms"] = {}
        run["worker_serving_ms"] = {}
        for pid in workers:
            told = [e for k, e, _, ns in puts.get(pid, []) if k == "changed" and name in ns and e >= t0]
            stored = [left for k, _, left, ns in puts.get(pid, [])
                      if k in ("answer", "replaced") and name in ns and left >= t0]
            run["worker_told_ms"][str(pid)] = 1000 * (min(told) - t0) if told else None
            run["worker_serving_ms"][str(pid)] = 1000 * (min(stored) - t0) if stored else None
        done = list(run["worker_serving_ms"].values())
        if done and None not in done:
            run["to_every_worker_ms"] = max(done)
        B.log("propagation %s: issue %s, held by both %s after %d handshakes, re-issue %s: %s ms to every worker "
              "(told %s), %d/4 new right after the answer" % (
                  name, run["issue_status"], run["held_by_both"], run["priming_handshakes"], run["reissue_status"],
                  "%.2f" % run["to_every_worker_ms"] if "to_every_worker_ms" in run else "?",
                  {k: None if v is None else round(v, 2) for k, v in run["worker_told_ms"].items()},
                  run["new_certificate_right_after"]))
    timed = [r["to_every_worker_ms"] for r in runs if "to_every_worker_ms" in r]
    told = [max(r["worker_told_ms"].values()) for r in runs
            if r.get("worker_told_ms") and None not in r["worker_told_ms"].values()]
    results["propagation"].update({
        "runs": runs, "master_pid": master, "worker_pids": workers,
        "summary": {
            "names": len(runs), "reissued": sum(1 for r in runs if r["reissue_status"] == 201),
            "held_by_both": sum(1 for r in runs if r["held_by_both"]), "timed": len(timed),
            "median_ms": B.median(timed) if timed else None, "max_ms": max(timed) if timed else None,
            "min_ms": min(timed) if timed else None,
            "told_median_ms": B.median(told) if told else None,
            "new_right_after": sum(r["new_certificate_right_after"] for r in runs), "tried_right_after": 4 * len(runs),
        },
    })


# -- memory: idle RSS and PSS with N certificates stored ---------------------------------


def memory_daemon(procs, args, work: str, n: int, redis_port: int, workers: int, start: str) -> tuple:
    """A daemon over the Redis store with ``n`` certificates (on-demand off), ``workers`` started by ``start``."""
    import yaml

    import cold_start as C

    tls_port, admin_port = B.free_port(), B.free_port()
    tag = "%d-w%d-%s" % (n, workers, start)
    path = C.write_config(work, tag, tls_port, redis_port)
    with open(path) as f:
        config = yaml.safe_load(f)
    config["workers"] = workers
    config["listen"]["admin"] = ["tcp:%d:interface=127.0.0.1" % admin_port]
    config["logging"] = {"level": "info", "format": "text", "file": "-"}
    with open(path, "w") as f:
        yaml.safe_dump(config, f, sort_keys=False)
    env = B.kongacme_env()
    env["KONGACME_WORKER_START"] = start
    tree = os.path.abspath(args.tree) if args.tree else B.REPO
    # -c and -m put the working directory first on sys.path: it picks the tree.
    env["PYTHONPATH"] = tree
    daemon = Daemon(procs, "wk-memory-" + tag, path, tls_port, admin_port, workers, None, env=env, timeout=1800,
                    cwd=tree)
    return daemon, tls_port


def memory_state(daemon: Daemon) -> dict:
    """RSS/PSS of the master, its zygote (if any) and each worker, and the totals, from smaps_rollup."""
    workers, zygotes = daemon.worker_pids(), daemon.zygote_pids()
    pids = [daemon.pid] + zygotes + workers
    mem = {str(pid): B.memory_kib(pid) for pid in pids}

    def part(pid: int) -> dict:
        m = mem[str(pid)]
        return {"Rss": m.get("Rss", 0), "Pss": m.get("Pss", 0),
                "Uss": m.get("Private_Clean", 0) + m.get("Private_Dirty", 0)}

    per = daemon.per_worker() if daemon.workers > 1 else {}
    return {
        "master": part(daemon.pid), "zygote": [part(p) for p in zygotes], "workers_mem": [part(p) for p in workers],
        "worker_certificates": {s: v.get("certificates") for s, v in per.items()},
        "total_rss_kib": sum(m.get("Rss", 0) for m in mem.values()),
        "total_pss_kib": sum(m.get("Pss", 0) for m in mem.values()),
        "smaps_rollup": mem,
    }


def part_memory(args, results: dict) -> None:
    import cold_start as C

    counts = [int(c) for c in args.certs.split(",")]
    work = B.out_dir("workers", "memory")
    ca_pem, entries = C.certificates(max(counts))
    runs: list = []
    layouts = [(1, "exec")] + [(w, start) for w in (int(x) for x in args.memory_workers.split(",")) if w > 1
                               for start in args.worker_start.split(",")]
    with B.Processes() as procs:
        for n in counts:
            redis_port, redis = C.start_redis(procs, work, str(n))
            fill_s = C.fill(redis_port, entries[:n])
            B.log("memory: %d certificates in Redis (%.1f s)" % (n, fill_s))
            for workers, start in layouts:
                note = quiet(args)
                t0 = time.monotonic()
                daemon, tls_port = memory_daemon(procs, args, work, n, redis_port, workers, start)
                loaded = wait_loaded(daemon, n, timeout=1800)
                idle = B.wait_idle(daemon.pid, quiet=2.0, threshold=0.02, timeout=1800)
                run = dict(memory_state(daemon), certificates=n, workers=workers, start=start,
                           ready_s=time.monotonic() - t0, loaded_line=loaded, idle_reached=idle["idle"],
                           quiet_machine=note)
                runs.append(run)
                log_memory(run)
                if args.touch and n >= args.touch:
                    # Names in use: each of --touch names handshaken
                    # --touch-passes times (a worker fetches a name on its first
                    # handshake for it; with two passes and two workers each
                    # sees ~3/4 of them, with k passes and N workers 1-(1-1/N)^k).
                    touched = [C.host(i) for i in range(args.touch)] * args.touch_passes
                    t1 = time.monotonic()
                    failed = sum(1 for f in in_parallel(lambda name: served_fingerprint(tls_port, name), touched)
                                 if f is None)
                    touch_s = time.monotonic() - t1
                    idle = B.wait_idle(daemon.pid, quiet=2.0, threshold=0.02, timeout=600)
                    touched_run = dict(run, **memory_state(daemon), touched=args.touch,
                                       touch_handshakes=len(touched), touch_failed=failed, touch_s=touch_s,
                                       idle_reached=idle["idle"])
                    runs.append(touched_run)
                    log_memory(touched_run)
                procs.stop(daemon.proc)
            procs.stop(redis)
    results["memory"] = {"runs": runs}


def log_memory(run: dict) -> None:
    B.log("memory %d certs%s, workers %d (%s): ready %.1f s; master RSS %.1f PSS %.1f MiB; zygote %s; workers %s; "
          "total RSS %.1f PSS %.1f MiB; worker cache entries %s" % (
              run["certificates"], ", %d names in use" % run["touched"] if run.get("touched") else "",
              run["workers"], run.get("start", "exec"), run["ready_s"], run["master"]["Rss"] / 1024,
              run["master"]["Pss"] / 1024,
              ["RSS %.1f PSS %.1f" % (z["Rss"] / 1024, z["Pss"] / 1024) for z in run.get("zygote", [])],
              ["RSS %.1f PSS %.1f USS %.1f" % (w["Rss"] / 1024, w["Pss"] / 1024, w.get("Uss", 0) / 1024)
               for w in run["workers_mem"]],
              run["total_rss_kib"] / 1024, run["total_pss_kib"] / 1024, run["worker_certificates"]))


# -- miss: a handshake for a name the worker does not hold yet, with N certificates stored ----------


def timed_handshake(port: int, name: str) -> float | None:
    """Seconds from connect to a finished unverified TLS handshake with SNI ``name``, or None."""
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    started = time.perf_counter()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
            with ctx.wrap_socket(raw, server_hostname=name):
                return time.perf_counter() - started
    except (OSError, ssl.SSLError):
        return None


def part_miss(args, results: dict) -> None:
    """
    ``workers: 2`` over --miss-certs certificates in Redis, one worker
    stopped (SIGSTOP: every connection goes to the other). For each of
    --miss-names names never used: a handshake (the worker does not hold
    the name: it fetches it from the master first), then another (held).
    Extra latency = the first minus the second, per name; medians. Memory
    of every process afterwards.
    """
    import cold_start as C

    n = args.miss_certs
    work = B.out_dir("workers", "memory")
    _, entries = C.certificates(n)
    with B.Processes() as procs:
        redis_port, redis = C.start_redis(procs, work, "miss")
        C.fill(redis_port, entries[:n])
        daemon, tls_port = memory_daemon(procs, args, work, n, redis_port, 2, args.worker_start.split(",")[0])
        wait_loaded(daemon, n, timeout=1800)
        B.wait_idle(daemon.pid, quiet=2.0, threshold=0.02, timeout=1800)
        stopped = daemon.worker_pids()[-1]
        os.kill(stopped, signal.SIGSTOP)
        try:
            note = quiet(args)
            names = [C.host(i) for i in range(n - args.miss_names, n)]  # never used by another part
            for i in range(50):  # warm-up on other names
                timed_handshake(tls_port, C.host(i))
            pairs = []
            for name in names:
                first = timed_handshake(tls_port, name)
                second = timed_handshake(tls_port, name)
                if first is not None and second is not None:
                    pairs.append((first, second))
            B.wait_idle(daemon.pid, quiet=2.0, threshold=0.02, timeout=600)
            state = memory_state(daemon)
        finally:
            os.kill(stopped, signal.SIGCONT)
        procs.stop(daemon.proc)
        procs.stop(redis)
    firsts = [1e3 * a for a, _ in pairs]
    seconds = [1e3 * b for _, b in pairs]
    extra = [1e3 * (a - b) for a, b in pairs]
    summary = {"certificates": n, "names": len(names), "measured": len(pairs), "quiet_machine": note,
               "not_held_ms_median": B.median(firsts), "held_ms_median": B.median(seconds),
               "extra_ms_median": B.median(extra), "extra_ms_p90": sorted(extra)[int(0.9 * len(extra))],
               "memory": state}
    results["miss"] = {"pairs_ms": [[a, b] for a, b in zip(firsts, seconds)], "summary": summary}
    B.log("miss, %d stored: handshake for a name not held %.2f ms median, held %.2f ms; extra %.2f ms median "
          "(p90 %.2f) over %d names" % (n, summary["not_held_ms_median"], summary["held_ms_median"],
                                        summary["extra_ms_median"], summary["extra_ms_p90"], len(pairs)))
    log_memory(dict(state, certificates=n, workers=2, ready_s=0.0))


def wait_loaded(daemon: Daemon, n: int, timeout: float) -> bool:
    """Until the master logs "N certificate(s) loaded from storage" (True), or the timeout (False)."""
    deadline = time.monotonic() + timeout
    pattern = re.compile(rb"(\d+) certificate\(s\) loaded from storage")
    while time.monotonic() < deadline:
        with open(daemon.proc.bench_log, "rb") as f:
            m = pattern.search(f.read())
        if m:
            return int(m.group(1)) == n
        if daemon.proc.poll() is not None:
            raise RuntimeError("%s exited:\n%s" % (daemon.name, B.tail(daemon.proc.bench_log)))
        time.sleep(0.2)
    return False


# -- summary ----------------------------------------------------------------------------------


def print_summary(results: dict, args) -> None:
    print()
    print("workers bench: %s; %d connections per h2load run, %d rounds; machine nproc %s" % (
        args.parts, args.connections, args.rounds, results["machine"]["nproc"]))
    for part, title in (("cpu", "pinned: servers on core 0, h2load + upstream on core 1"),
                        ("wall", "nothing pinned: servers, h2load and upstream share both cores")):
        if part not in results:
            continue
        s = results[part]["summary"]
        print("\n[%s] %s" % (part, title))
        print("%-22s %12s %10s %10s %10s %10s  %s" % ("server", "hs/CPU-s", "hs/s", "srv CPU s", "h2load s",
                                                     "upstr. s", "worker shares (all rounds)"))
        for name in ("workers-1", "workers-2", STOPPED, "haproxy-nbthread2"):
            if name in s:
                r = s[name]
                print("%-22s %12.0f %10.0f %10.2f %10.2f %10.2f  %s%s" % (
                    name, r["hs_per_cpu_s"], r["hs_per_s"], r["server_cpu_s"], r["client_cpu_s"],
                    r["upstream_cpu_s"], r.get("worker_shares_all", ""),
                    "  FAILED %d" % r["failed"] if r["failed"] else ""))
        if "ratio_w2_w1_hs_per_cpu_s" in s:
            print("workers 2 / 1: hs per CPU-s %.3f (paired %.3f) [aim 0.95-1.05]; hs/s %.2f" % (
                s["ratio_w2_w1_hs_per_cpu_s"], s["ratio_w2_w1_hs_per_cpu_s_paired"], s["ratio_w2_w1_hs_per_s"]))
        if "ratio_one_worker_w1_hs_per_cpu_s" in s:
            print("one worker serving (the other stopped) / workers 1: hs per CPU-s %.3f (paired %.3f)" % (
                s["ratio_one_worker_w1_hs_per_cpu_s"], s["ratio_one_worker_w1_hs_per_cpu_s_paired"]))
        if "master_own_cpu_share" in s.get("workers-2", {}):
            print("master's own share of workers: 2 CPU during runs: %.1f %%" % (
                100 * s["workers-2"]["master_own_cpu_share"]))
        if "ratio_w2_haproxy_hs_per_s" in s:
            print("workers 2 / HAProxy nbthread 2: hs/s %.2f, hs per CPU-s %.2f" % (
                s["ratio_w2_haproxy_hs_per_s"], s["ratio_w2_haproxy_hs_per_cpu_s"]))
    if "balance" in results:
        s = results["balance"]["summary"]
        print("\n[balance] two processes, h2load -c %d per round: share of process 1 per round" % args.connections)
        for mode in ("inherit", "reuseport"):
            print("  %-9s %s  larger share: median %.1f %%, worst %.1f %%  (%.0f hs/s)" % (
                mode, s[mode]["share_1_all"], 100 * s[mode]["max_share_median"], 100 * s[mode]["max_share_worst"],
                s[mode]["hs_per_s"]))
    if "propagation" in results:
        s = results["propagation"]["summary"]
        fmt = lambda v: "%.2f" % v if v is not None else "?"  # noqa: E731
        print("\n[propagation] re-issue of a name both workers hold: order finished in the master -> the new "
              "certificate stored in every worker: median %s ms, min %s, max %s over %d names (%d re-issued, %d held "
              "by both) [aim median < 5 ms]; CertificatesChanged reached both: median %s ms; %d/%d handshakes right "
              "after POST /acme answered got the new certificate" % (
                  fmt(s["median_ms"]), fmt(s["min_ms"]), fmt(s["max_ms"]), s["timed"], s["reissued"],
                  s["held_by_both"], fmt(s["told_median_ms"]), s["new_right_after"], s["tried_right_after"]))
    if "memory" in results:
        print("\n[memory] idle, MiB (RSS / PSS)")
        for r in results["memory"]["runs"]:
            print("  %7d certs%s, workers %d (%s): master %.1f / %.1f; zygote %s; workers %s; total %.1f / %.1f; "
                  "ready %.0f s%s" % (
                      r["certificates"], " (%d in use)" % r["touched"] if r.get("touched") else "", r["workers"],
                      r.get("start", "exec"), r["master"]["Rss"] / 1024, r["master"]["Pss"] / 1024,
                      ", ".join("%.1f / %.1f" % (z["Rss"] / 1024, z["Pss"] / 1024) for z in r.get("zygote", []))
                      or "-",
                      ", ".join("%.1f / %.1f" % (w["Rss"] / 1024, w["Pss"] / 1024) for w in r["workers_mem"]) or "-",
                      r["total_rss_kib"] / 1024, r["total_pss_kib"] / 1024, r["ready_s"],
                      "" if r["loaded_line"] else " (load line not seen)"))
    if "miss" in results:
        s = results["miss"]["summary"]
        print("\n[miss] %d stored, one worker serving: handshake for a name it does not hold %.2f ms median, held "
              "%.2f ms; extra %.2f ms median (p90 %.2f) over %d names [aim < 2 ms]" % (
                  s["certificates"], s["not_held_ms_median"], s["held_ms_median"], s["extra_ms_median"],
                  s["extra_ms_p90"], s["measured"]))
    notes = []
    for part in ("cpu", "wall"):
        for r in results.get(part, {}).get("runs", []):
            if not r["quiet_machine"]["reached"]:
                notes.append("%s round %d" % (part, r["round"]))
            if not r["idle_reached"]:
                notes.append("%s round %d %s: CPU read before idle" % (part, r["round"], r["server"]))
    for r in results.get("balance", {}).get("runs", []):
        if not r["quiet_machine"]["reached"]:
            notes.append("balance round %d" % r["round"])
    for r in results.get("memory", {}).get("runs", []):
        if not r["quiet_machine"]["reached"]:
            notes.append("memory %d/w%d" % (r["certificates"], r["workers"]))
    if notes:
        print("\nNOTE: load average not below %.2f (or CPU not idle) at: %s" % (args.max_load,
                                                                               ", ".join(sorted(set(notes)))))


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.balance_child:
        balance_child(*args.balance_child)
        return 0
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise SystemExit("unknown parts: %s" % ", ".join(sorted(unknown)))
    results: dict = {"args": vars(args), "machine": B.machine_info(), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                                time.gmtime())}
    for part in parts:
        B.log("part", part)
        if part in ("cpu", "wall"):
            part_handshakes(args, results, part)
        elif part == "balance":
            part_balance(args, results)
        elif part == "propagation":
            part_propagation(args, results)
        elif part == "memory":
            part_memory(args, results)
        elif part == "miss":
            part_miss(args, results)
        B.save_json(args.json, results)
    results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    path = B.save_json(args.json, results)
    print_summary(results, args)
    print("raw results:", path)
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.exit(main())
