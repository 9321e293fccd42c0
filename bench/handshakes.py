#!/usr/bin/env python3
"""
Full TLS 1.3 handshakes per server CPU-second: kongacme (one process) vs
HAProxy (nbthread 1), both terminating TLS with the same ECDSA P-256
certificate and forwarding each connection to the same upstream.

Load: ``h2load --h1 -n N -c N -t 1`` (one new TLS connection per request,
no resumption) pinned to core 1 with the upstream; the servers are pinned to
core 0. Server CPU = utime+stime from /proc/<pid>/stat (the process and any
children) around each run, each read once the server is idle again (its CPU
grew < 5 ms in 0.5 s): when h2load exits the server may still be closing
sockets. Each round starts once the 1-minute load average is below 0.8 (or
after --max-load-wait s, noted).
Rounds alternate the order of the two servers; medians and ratios are
reported, raw numbers go to bench/out/handshakes.json.
"""

from __future__ import annotations

import argparse
import sys

import benchlib as B


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", "--connections", default="4000",
                   help="connections (= requests = h2load -n and -c) per run (default 4000); a comma list "
                        "(e.g. 500,1000,2000,4000) runs every round set once per value: a concurrency sweep")
    p.add_argument("--rounds", type=int, default=7, help="alternating rounds (default 7)")
    p.add_argument("--rate", type=int, default=0,
                   help="paced mode: h2load -r RATE/10 --rate-period 100ms, i.e. RATE new connections per second "
                        "(default 0: all connections at once, as in TESTBED.md)")
    p.add_argument("--warmup", type=int, default=1000, help="warm-up connections per server (default 1000)")
    p.add_argument("--haproxy-mode", choices=("tcp", "http"), default="tcp",
                   help="HAProxy frontend mode (default tcp: the same L4 work as kongacme)")
    p.add_argument("--no-tickets", action="store_true",
                   help="disable session tickets on both servers (default: both issue tickets, as deployed)")
    p.add_argument("--key-type", choices=("ecc", "rsa"), default="ecc", help="leaf key (default ecc = P-256)")
    p.add_argument("--max-load", type=float, default=0.8,
                   help="before each round, wait until the 1-minute load average is below this (default 0.8)")
    p.add_argument("--max-load-wait", type=float, default=60.0,
                   help="...for at most this many seconds, then measure anyway and say so (default 60)")
    p.add_argument("--json", default="handshakes.json", help="result file under bench/out/")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    B.log("machine:", B.machine_info()["cpu_model"])
    work = B.out_dir("handshakes")
    ca = B.load_or_create_ca(B.out_dir("ca"))
    host = "bench.test"
    leaf = B.issue_files(ca, work, "leaf-" + args.key_type, [host], key_type=args.key_type)
    tickets = not args.no_tickets
    sizes = [int(x) for x in str(args.connections).split(",")]
    results: dict = {"args": vars(args), "machine": B.machine_info(), "runs": []}

    with B.Processes() as procs:
        up_port, k_port, h_port = B.free_port(), B.free_port(), B.free_port()
        B.start_haproxy(procs, "hs-upstream", B.haproxy_upstream_config(up_port), up_port, B.CLIENT_CPU)
        cfg = B.kongacme_config(
            work, k_port,
            certificates=[{"cert": leaf["cert"], "key": leaf["key"]}],
            routes=[{"hosts": [host], "upstream": "127.0.0.1:%d" % up_port, "alpn": ["h2", "http/1.1"]}],
            fallback=leaf, session_tickets=tickets,
        )
        servers = {
            "kongacme": (B.start_kongacme(procs, "hs-kongacme", cfg, k_port), k_port),
            "haproxy": (B.start_haproxy(procs, "hs-haproxy",
                                        B.haproxy_tls_config(h_port, leaf["pem"], up_port, mode=args.haproxy_mode,
                                                             session_tickets=tickets),
                                        h_port, B.SERVER_CPU), h_port),
        }
        extra = ["-r", str(max(1, args.rate // 10)), "--rate-period", "100ms"] if args.rate else []
        for name, (proc, port) in servers.items():
            results.setdefault("tls13_tickets_per_handshake", {})[name] = B.tls13_tickets(host, port)
            if args.warmup:
                r = B.run_h2load(host, port, args.warmup, args.warmup)
                B.log("warm-up %s: %s %s %s %s" % (name, r.get("tls_protocol"), r.get("cipher"),
                                                   r.get("temp_key"), r.get("alpn")))
                results.setdefault("negotiated", {})[name] = {k: r.get(k) for k in
                                                              ("tls_protocol", "cipher", "temp_key", "alpn")}
        for conns, rnd in [(c, r) for c in sizes for r in range(args.rounds)]:
            order = ["kongacme", "haproxy"] if rnd % 2 == 0 else ["haproxy", "kongacme"]
            quiet = B.wait_for_quiet_machine(args.max_load, args.max_load_wait)
            for name in order:
                proc, port = servers[name]
                # Read the server's CPU only while it is idle: after h2load
                # exits it may still be closing thousands of sockets (1-12 %
                # of a run's CPU came after the client's end).
                c0, _ = B.cpu_when_idle(proc.pid)
                r = B.run_h2load(host, port, conns, conns, extra=extra)
                c1, idle = B.cpu_when_idle(proc.pid)
                cpu = c1 - c0
                ok = r["succeeded"]
                run = {
                    "round": rnd, "connections": conns, "server": name, "handshakes": ok, "failed": r.get("failed", 0) + r.get("errored", 0),
                    "server_cpu_s": cpu, "hs_per_cpu_s": ok / cpu if cpu else float("nan"),
                    "hs_per_s": ok / r["finished_s"], "us_cpu_per_hs": 1e6 * cpu / ok,
                    "h2load": r["argv"], "idle_wait_s": round(idle["waited_s"], 2), "idle_reached": idle["idle"],
                    "quiet_machine": quiet,
                }
                results["runs"].append(run)
                B.log("c=%d round %d %-8s %5d hs  cpu %.2fs  %6.0f hs/cpu-s  %6.0f hs/s  (%d failed)" % (
                    conns, rnd, name, ok, cpu, run["hs_per_cpu_s"], run["hs_per_s"], run["failed"]))
        for name, (proc, _) in servers.items():
            results.setdefault("rss_kib_end", {})[name] = B.rss_kib(proc.pid)

    summaries = {c: summarize([r for r in results["runs"] if r["connections"] == c]) for c in sizes}
    results["summary"] = summaries[sizes[-1]] if len(sizes) == 1 else summaries
    path = B.save_json(args.json, results)
    for c, summary in summaries.items():
        print_summary(summary, results.get("negotiated", {}), args, c)
    noisy = sorted({r["round"] for r in results["runs"] if not r["quiet_machine"]["reached"]})
    if noisy:
        print("NOTE: rounds %s started with the 1-minute load average >= %.2f (waited %.0f s)"
              % (noisy, args.max_load, args.max_load_wait))
    late = [r for r in results["runs"] if not r["idle_reached"]]
    if late:
        print("NOTE: %d run(s) read the server's CPU before it was idle (30 s timeout)" % len(late))
    print("TLS 1.3 session tickets sent per handshake:", results.get("tls13_tickets_per_handshake"))
    print("raw results:", path)
    return 0


def summarize(runs: list[dict]) -> dict:
    s: dict = {}
    for name in ("kongacme", "haproxy"):
        mine = [r for r in runs if r["server"] == name]
        s[name] = {
            "hs_per_cpu_s": B.median(r["hs_per_cpu_s"] for r in mine),
            "hs_per_s": B.median(r["hs_per_s"] for r in mine),
            "us_cpu_per_hs": B.median(r["us_cpu_per_hs"] for r in mine),
            "all_hs_per_cpu_s": [round(r["hs_per_cpu_s"]) for r in mine],
            "failed": sum(r["failed"] for r in mine),
        }
    k, h = s["kongacme"], s["haproxy"]
    paired = []
    for rnd in sorted({r["round"] for r in runs}):
        kr = [r for r in runs if r["round"] == rnd and r["server"] == "kongacme"]
        hr = [r for r in runs if r["round"] == rnd and r["server"] == "haproxy"]
        if kr and hr:
            paired.append(kr[0]["hs_per_cpu_s"] / hr[0]["hs_per_cpu_s"])
    s["ratio_hs_per_cpu_s"] = k["hs_per_cpu_s"] / h["hs_per_cpu_s"]
    s["ratio_hs_per_cpu_s_paired_median"] = B.median(paired) if paired else None
    s["ratio_hs_per_s"] = k["hs_per_s"] / h["hs_per_s"]
    return s


def print_summary(s: dict, negotiated: dict, args, conns: int) -> None:
    print()
    print("Full TLS handshakes (%s), %d connections per run (%s), %d rounds, HAProxy mode %s, tickets %s" % (
        args.key_type, conns, "%d/s paced" % args.rate if args.rate else "all at once", args.rounds,
        args.haproxy_mode, "off" if args.no_tickets else "on"))
    for name, neg in negotiated.items():
        print("  %-8s negotiated: %s" % (name, " ".join(str(v) for v in neg.values())))
    print("%-10s %14s %12s %12s   %s" % ("server", "hs/CPU-s med", "hs/s med", "us CPU/hs", "all rounds hs/CPU-s"))
    for name in ("kongacme", "haproxy"):
        r = s[name]
        print("%-10s %14.0f %12.0f %12.1f   %s%s" % (name, r["hs_per_cpu_s"], r["hs_per_s"], r["us_cpu_per_hs"],
                                                   r["all_hs_per_cpu_s"],
                                                   "  FAILED: %d" % r["failed"] if r["failed"] else ""))
    print("ratio kongacme/HAProxy: hs per CPU-s %.2f (median of per-round ratios %.2f), raw hs/s %.2f  [aim >= 1.0]"
          % (s["ratio_hs_per_cpu_s"], s["ratio_hs_per_cpu_s_paired_median"] or float("nan"), s["ratio_hs_per_s"]))


if __name__ == "__main__":
    sys.exit(main())
