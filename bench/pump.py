#!/usr/bin/env python3
"""
Issue 12: the TLS pump, side by side. Four servers on core 0, each
terminating TLS with the same ECDSA P-256 certificate and forwarding to the
same upstream on core 1 with the client:

- ``kongacme``: this tree;
- ``before``: kongacme from another tree (``--before-tree``, e.g. a
  ``git archive`` of the commit before the pump), for the before/after;
- ``haproxy``: HAProxy ``nbthread 1``, ``mode tcp``;
- ``hitch``: hitch ``--workers=1`` (an L4 TLS proxy like kongacme);
- ``twisted`` / ``lean`` (``--also-engine twisted``, ``--lean``): this tree
  again with that ``listen.engine`` (the default is ``lean``).

Measures, per server CPU-second (utime+stime of the server and its children
around each run, read once the server is idle again):

- ``handshakes``: ``h2load --h1 -n N -c N`` (one new TLS 1.3 connection per
  request, no resumption);
- ``keepalive``: ``h2load --h1 -n 100000 -c 100`` (100 connections x 1,000
  small requests each, kept alive), requests per CPU-second;
- ``bulk``: 100 MB over one connection (curl, from bench/bulk_upstream.py),
  MB per CPU-second.

Each round waits for the 1-minute load average to drop below --max-load (or
--max-load-wait seconds, noted) and runs the servers in a rotated order;
medians and per-round (paired) ratios against each peer are reported. Raw
results: bench/out/pump.json.
"""

from __future__ import annotations

import argparse
import os
import socket
import ssl
import sys

import benchlib as B
import throughput as T

SERVERS = ("kongacme", "before", "haproxy", "hitch")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--measures", default="handshakes,keepalive,bulk")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("-n", "--connections", type=int, default=3000, help="handshakes: connections per run")
    p.add_argument("--keepalive-requests", type=int, default=100000)
    p.add_argument("--keepalive-connections", type=int, default=100)
    p.add_argument("--size-mb", type=int, default=100)
    p.add_argument("--before-tree", default="", help="a kongacme source tree to run as 'before' (omit: no 'before')")
    p.add_argument("--before-engine", default="", help="listen.engine for 'before' (e.g. lean; omit: the default)")
    p.add_argument("--no-hitch", action="store_true")
    p.add_argument("--busy-bulk", action="store_true",
                   help="20 TLS handshakes (no request) to each bulk server first: kongacme's certificate is "
                        "then busy, its bulk connection on the standard library's ssl (by default it is the "
                        "certificate's first connection, on pyOpenSSL)")
    p.add_argument("--also-engine", action="append", default=[], choices=("twisted", "lean"),
                   help="also run this tree with this listen.engine (as a server of that name), same leaf and "
                        "routes; repeatable")
    p.add_argument("--lean", action="store_true", help="the same as --also-engine lean")
    p.add_argument("--extra", action="append", default=[], metavar="NAME=COMMAND",
                   help="one more server, pinned like the others; COMMAND is split on spaces and may use "
                        "{port} {upstream} {cert} {key} {pem} (e.g. a prototype to compare)")
    p.add_argument("--max-load", type=float, default=0.8)
    p.add_argument("--max-load-wait", type=float, default=300.0)
    p.add_argument("--json", default="pump.json")
    return p.parse_args(argv)


def hitch_argv(port: int, pem: str, upstream_port: int) -> list[str]:
    """
    hitch with one worker, kongacme's protocol versions and TLS 1.2 ciphers
    (hitch 1.7 has no option for TLS 1.3 suites or curves: OpenSSL's
    defaults, which include X25519 and both AES-GCM suites).
    """
    return ["hitch", "--workers=1", "--daemon=off", "--quiet", "--user=nobody",
            "--frontend=[127.0.0.1]:%d" % port, "--backend=[127.0.0.1]:%d" % upstream_port,
            "--tls-protos=TLSv1.2 TLSv1.3", "--ciphers=" + B.TLS12_CIPHERS, "--alpn-protos=http/1.1",
            "--backlog=4096", pem]


def start_kongacme_from(procs, name: str, tree: str, config: str, port: int):
    env = B.kongacme_env()
    env["PYTHONPATH"] = tree
    proc = procs.start(name, B.kongacme_argv(config), cpu=B.SERVER_CPU, cwd=tree, env=env)
    B.wait_port(port, proc, 120)
    return proc


def measure(kind: str, proc, port: int, host: str, args) -> dict:
    c0, _ = B.cpu_when_idle(proc.pid)
    if kind == "handshakes":
        r = B.run_h2load(host, port, args.connections, args.connections)
        work, wall = r["succeeded"], r["finished_s"]
    elif kind == "keepalive":
        r = B.run_h2load(host, port, args.keepalive_requests, args.keepalive_connections)
        work, wall = r["succeeded"], r["finished_s"]
    else:
        r = T.download(host, port)
        work, wall = r["bytes"] / 1e6, r["time_total"]
    c1, idle = B.cpu_when_idle(proc.pid)
    cpu = c1 - c0
    return {"work": work, "cpu_s": cpu, "per_cpu_s": work / cpu if cpu else float("nan"),
            "per_s": work / wall if wall else float("nan"), "failed": r.get("failed", 0) + r.get("errored", 0),
            "idle_reached": idle["idle"]}


def main(argv=None) -> int:
    args = parse_args(argv)
    measures = [m for m in args.measures.split(",") if m]
    work = B.out_dir("pump")
    ca = B.load_or_create_ca(B.out_dir("ca"))
    host = "bench.test"
    leaf = B.issue_files(ca, work, "leaf-ecc", [host])
    results: dict = {"args": vars(args), "machine": B.machine_info(), "runs": []}
    with B.Processes() as procs:
        up_port, bulk_port = B.free_port(), B.free_port()
        B.start_haproxy(procs, "pump-upstream", B.haproxy_upstream_config(up_port), up_port, B.CLIENT_CPU)
        if "bulk" in measures:
            data = T.payload(args.size_mb)
            bulk = procs.start("pump-bulk", [sys.executable, os.path.join(B.BENCH, "bulk_upstream.py"),
                                             str(bulk_port), data], cpu=B.CLIENT_CPU)
            B.wait_port(bulk_port, bulk)
        servers: dict = {}
        for upstream, label in ((up_port, ""), (bulk_port, "-bulk")):
            if label and "bulk" not in measures:
                continue
            ports = {name: B.free_port() for name in SERVERS}
            kdir = B.out_dir("pump", "kongacme" + label)
            routes = [{"hosts": [host], "upstream": "127.0.0.1:%d" % upstream, "alpn": ["http/1.1"]}]
            cfg = B.kongacme_config(kdir, ports["kongacme"], [{"cert": leaf["cert"], "key": leaf["key"]}],
                                    routes, fallback=leaf)
            group = {"kongacme": (B.start_kongacme(procs, "pump-kongacme" + label, cfg, ports["kongacme"]),
                                  ports["kongacme"])}
            for engine in dict.fromkeys(args.also_engine + (["lean"] if args.lean else [])):
                edir = B.out_dir("pump", engine + label)
                eport = B.free_port()
                ecfg = B.kongacme_config(edir, eport, [{"cert": leaf["cert"], "key": leaf["key"]}],
                                         routes, fallback=leaf, engine=engine)
                group[engine] = (B.start_kongacme(procs, "pump-%s%s" % (engine, label), ecfg, eport), eport)
            if args.before_tree:
                bdir = B.out_dir("pump", "before" + label)
                bcfg = B.kongacme_config(bdir, ports["before"], [{"cert": leaf["cert"], "key": leaf["key"]}],
                                         routes, fallback=leaf, engine=args.before_engine)
                group["before"] = (start_kongacme_from(procs, "pump-before" + label, args.before_tree, bcfg,
                                                       ports["before"]), ports["before"])
            group["haproxy"] = (B.start_haproxy(procs, "pump-haproxy" + label,
                                                B.haproxy_tls_config(ports["haproxy"], leaf["pem"], upstream),
                                                ports["haproxy"], B.SERVER_CPU), ports["haproxy"])
            if not args.no_hitch:
                proc = procs.start("pump-hitch" + label, hitch_argv(ports["hitch"], leaf["pem"], upstream),
                                   cpu=B.SERVER_CPU)
                B.wait_port(ports["hitch"], proc)
                group["hitch"] = (proc, ports["hitch"])
            for extra in args.extra:
                name, _, command = extra.partition("=")
                eport = B.free_port()
                argv = [w.format(port=eport, upstream=upstream, cert=leaf["cert"], key=leaf["key"], pem=leaf["pem"])
                        for w in command.split()]
                proc = procs.start("pump-%s%s" % (name, label), argv, cpu=B.SERVER_CPU)
                B.wait_port(eport, proc)
                group[name] = (proc, eport)
            servers[label or "main"] = group
        for label, group in servers.items():
            for name, (proc, port) in group.items():
                if label == "main":
                    B.run_h2load(host, port, 500, 500)  # warm-up
                    results.setdefault("tickets", {})[name] = B.tls13_tickets(host, port)
                elif args.busy_bulk:
                    handshakes_only(host, port, 20)  # no request: the bulk upstream would send it all
        if "-bulk" in servers:
            # One untimed download first (through HAProxy): a run's first
            # transfer came out at a third of the later ones' MB per
            # CPU-second for whichever server was measured first (sessions
            # 20-22), and only for that one.
            _, port = servers["-bulk"]["haproxy"]
            T.download(host, port)
        for rnd in range(args.rounds):
            for kind in measures:
                group = servers["-bulk" if kind == "bulk" else "main"]
                names = list(group)
                order = names[rnd % len(names):] + names[:rnd % len(names)]
                quiet = B.wait_for_quiet_machine(args.max_load, args.max_load_wait)
                for name in order:
                    proc, port = group[name]
                    run = measure(kind, proc, port, host, args)
                    run.update({"round": rnd, "measure": kind, "server": name, "load": quiet})
                    results["runs"].append(run)
                    B.log("%-10s round %d %-8s %10.1f per CPU-s  %9.1f per s  cpu %.2fs  load %.2f%s" % (
                        kind, rnd, name, run["per_cpu_s"], run["per_s"], run["cpu_s"], quiet.get("loadavg", -1),
                        "  FAILED %d" % run["failed"] if run["failed"] else ""))
        results["summary"] = {kind: summarize([r for r in results["runs"] if r["measure"] == kind])
                              for kind in measures}
    path = B.save_json(args.json, results)
    for kind, s in results["summary"].items():
        print("\n%s (per server CPU-second, median of %d rounds)" % (kind, args.rounds))
        for name, v in s["servers"].items():
            print("  %-9s %10.1f   all: %s" % (name, v["median"], v["all"]))
        for pair, v in s["ratios"].items():
            print("  %-20s %.2f (paired median %.2f)" % (pair, v["of_medians"], v["paired"]))
    print("TLS 1.3 tickets per handshake:", results.get("tickets"))
    print("raw results:", path)
    return 0


def handshakes_only(host: str, port: int, count: int) -> None:
    """``count`` TLS handshakes with ``port`` for ``host``, each closed without a request."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    for _ in range(count):
        with socket.create_connection(("127.0.0.1", port)) as sock:
            with context.wrap_socket(sock, server_hostname=host):
                pass


def summarize(runs: list[dict]) -> dict:
    seen = list(dict.fromkeys(r["server"] for r in runs))
    names = [n for n in SERVERS if n in seen] + [n for n in seen if n not in SERVERS]
    servers = {n: {"median": B.median(r["per_cpu_s"] for r in runs if r["server"] == n),
                   "all": [round(r["per_cpu_s"], 1) for r in runs if r["server"] == n]} for n in names}
    ratios = {}
    for mine in ["kongacme", "before"] + [n for n in names if n not in SERVERS]:
        for peer in ("haproxy", "hitch", "before", "kongacme"):
            if mine == peer or mine not in servers or peer not in servers:
                continue
            paired = []
            for rnd in sorted({r["round"] for r in runs}):
                a = [r["per_cpu_s"] for r in runs if r["round"] == rnd and r["server"] == mine]
                b = [r["per_cpu_s"] for r in runs if r["round"] == rnd and r["server"] == peer]
                if a and b:
                    paired.append(a[0] / b[0])
            ratios["%s/%s" % (mine, peer)] = {"of_medians": servers[mine]["median"] / servers[peer]["median"],
                                              "paired": B.median(paired)}
    return {"servers": servers, "ratios": ratios}


if __name__ == "__main__":
    sys.exit(main())
