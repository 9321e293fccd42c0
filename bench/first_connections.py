#!/usr/bin/env python3
"""
Issue 12, session 24: what a certificate's first connections cost the
server, with it on kongacme's own OpenSSL binding from its first connection
(``CERTIFICATE_AFTER = 1``, the default since session 24: one session
ticket, or none with ``session_tickets: false``, as configured) against
from its second (``CERTIFICATE_AFTER = 2``, sessions 22-23: the first on
pyOpenSSL, which sends OpenSSL's two tickets; the leaf and key parsed for
the binding on the second).

Two daemons from this tree run side by side on the server core (loaded one
at a time), each with N static certificates (one ECDSA P-256 leaf per name, or
RSA-2048 with ``--key-type rsa``; ``bench/out/certs-N/``, as
``cache_scale.py`` makes them), all routed to one
HAProxy upstream; each is started fresh per round, so every name's first
connection is measured. Per round, three passes of one full TLS 1.3
handshake per name (Python's ``ssl`` on the client core, four threads, one
GET each): pass 1 is every certificate's first connection, pass 2 its
second, pass 3 its third. Measured per pass: the server's CPU per
handshake (read once it is idle again) and its RSS after the pass. The two
daemons' passes alternate, their order swapped every round; medians over
rounds, and the ratio of each pass (and of passes 1+2) between them.

    .venv/bin/python bench/first_connections.py --certs 1000 --rounds 5
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time

import benchlib as B

#: label -> CERTIFICATE_AFTER
VARIANTS = {"first": 1, "second": 2}


def daemon_main(config: str, certificate_after: int) -> int:
    """Run the daemon in this process with ``CERTIFICATE_AFTER`` set (same PID: its CPU is what is read)."""
    sys.path.insert(0, B.REPO)
    os.chdir(B.REPO)
    import kongacme.tls.stdlib

    kongacme.tls.stdlib.CERTIFICATE_AFTER = certificate_after
    from twisted.scripts.twistd import run

    sys.argv = ["twistd", *B.kongacme_argv(config)[3:]]
    run()
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--certs", type=int, default=1000, help="certificates, one name each (default 1000)")
    p.add_argument("--rounds", type=int, default=5, help="rounds, each with fresh daemons (default 5)")
    p.add_argument("--passes", type=int, default=3, help="handshakes per name per round (default 3)")
    p.add_argument("--key-type", choices=("ecc", "rsa"), default="ecc", help="the leaves' keys (rsa: 2048 bits)")
    p.add_argument("--threads", type=int, default=4, help="client threads (default 4)")
    p.add_argument("--max-load-wait", type=float, default=120.0,
                   help="seconds to wait for a 1-minute load average below 0.8 before each round")
    p.add_argument("--json", default="first_connections.json", help="result file under bench/out/")
    p.add_argument("--daemon", nargs=2, metavar=("CONFIG", "CERTIFICATE_AFTER"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.daemon:
        return daemon_main(args.daemon[0], int(args.daemon[1]))

    from cache_scale import certificate_set

    os.sched_setaffinity(0, {int(B.CLIENT_CPU)})
    _, entries = certificate_set(args.certs, args.key_type)
    names = [e["name"] for e in entries]
    results: dict = {"args": vars(args), "machine": B.machine_info(), "code": B.code_version(), "runs": []}
    labels = list(VARIANTS)
    with B.Processes() as procs:
        up_port = B.free_port()
        B.start_haproxy(procs, "fc-upstream", B.haproxy_upstream_config(up_port), up_port, B.CLIENT_CPU)
        routes = [{"hosts": ["*.bench.test"], "upstream": "127.0.0.1:%d" % up_port, "alpn": ["h2", "http/1.1"]}]
        certificates = [{"cert": e["cert"], "key": e["key"]} for e in entries]
        for rnd in range(args.rounds):
            quiet = B.wait_for_quiet_machine(max_wait=args.max_load_wait)
            daemons = {}
            for label, after in VARIANTS.items():
                port = B.free_port()
                config = B.kongacme_config(B.out_dir("first_connections", label), port, certificates, routes,
                                           entries[0])
                argv = [sys.executable, os.path.abspath(__file__), "--daemon", config, str(after)]
                proc = procs.start("fc-kongacme-" + label, argv, cpu=B.SERVER_CPU, cwd=B.REPO, env=B.kongacme_env())
                B.wait_port(port, proc, 600)
                daemons[label] = (proc, port)
            for proc, _ in daemons.values():
                B.wait_idle(proc.pid, timeout=60)
            order = labels if rnd % 2 == 0 else labels[::-1]
            shuffled = random.Random(rnd).sample(names, len(names))
            for number in range(1, args.passes + 1):
                for label in order:
                    proc, port = daemons[label]
                    c0 = B.tree_cpu_seconds(proc.pid)
                    r = B.tls_client_loop(port, shuffled, args.threads)
                    c1, idle = B.cpu_when_idle(proc.pid)
                    run = {"round": rnd, "label": label, "pass": number, "handshakes": r["ok"],
                           "errors": r["errors"], "server_cpu_s": c1 - c0,
                           "us_per_hs": 1e6 * (c1 - c0) / max(r["ok"], 1), "rss_kib": B.rss_kib(proc.pid),
                           "idle": idle["idle"], "loadavg_at_round": quiet["loadavg"],
                           "first_error": r["first_error"]}
                    results["runs"].append(run)
                    B.log("round %d pass %d %-6s: %5.0f us CPU/handshake, RSS %6d KiB%s" % (
                        rnd, number, label, run["us_per_hs"], run["rss_kib"],
                        "  errors %d: %s" % (r["errors"], r["first_error"]) if r["errors"] else ""))
            for proc, _ in daemons.values():
                procs.stop(proc)
            time.sleep(1.0)

    summary: dict = {}
    runs = results["runs"]
    for number in range(1, args.passes + 1):
        med = {label: B.median(r["us_per_hs"] for r in runs if r["label"] == label and r["pass"] == number)
               for label in labels}
        rss = {label: B.median(r["rss_kib"] for r in runs if r["label"] == label and r["pass"] == number)
               for label in labels}
        summary["pass %d" % number] = {"us_per_hs": med, "rss_kib": rss, "ratio_first_over_second":
                                       med["first"] / med["second"]}
    both = {}
    for label in labels:
        per_round = []
        for rnd in range(args.rounds):
            one = [r["us_per_hs"] for r in runs if r["label"] == label and r["round"] == rnd and r["pass"] in (1, 2)]
            if len(one) == 2:
                per_round.append(sum(one))
        both[label] = B.median(per_round)
    summary["passes 1+2"] = {"us_per_hs": both, "ratio_first_over_second": both["first"] / both["second"]}
    results["summary"] = summary
    path = B.save_json(args.json, results)
    print()
    print("A certificate's first connections, %d %s certificates, %d rounds (server CPU per handshake, medians)" % (
        args.certs, args.key_type, args.rounds))
    for key, s in summary.items():
        rss = s.get("rss_kib")
        print("  %-10s first (own binding from the 1st): %5.0f us   second (from the 2nd): %5.0f us   ratio %.3f%s" % (
            key, s["us_per_hs"]["first"], s["us_per_hs"]["second"], s["ratio_first_over_second"],
            "   RSS after: %d / %d KiB" % (rss["first"], rss["second"]) if rss else ""))
    print("raw results:", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
