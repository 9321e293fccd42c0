#!/usr/bin/env python3
"""
Handshake cost with 10,000 certificates in kongacme's cache vs 1.

Two kongacme daemons run side by side (both pinned to core 0, loaded one at
a time): one with a single static certificate, one with N (default 10,000)
static certificates, one ECDSA P-256 leaf per name hNNNNN.bench.test, all
routed (``*.bench.test``) to the same fast upstream. The certificates are
generated once with kongacme.testing.TestCA into bench/out/certs-N/ and
reused by later runs.

Measured, in alternating rounds, as server CPU per handshake:

1. h2load --h1 -n C -c C against one name (h2load sends one SNI per run;
   the single-certificate daemon serves that same name's certificate);
2. a Python ssl client (threads, one new connection per handshake) whose
   SNI walks over many different names: on the N-certificate daemon it
   spreads over all N names (after one unmeasured pass that builds every
   name's SSL context: contexts are lazy), on the 1-certificate daemon it
   repeats the one name. The first pass is reported too (context build cost).

Aim: the N-certificate rate within 5% of the 1-certificate rate.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time

import benchlib as B


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--certs", type=int, default=10000, help="certificates in the big cache (default 10000)")
    p.add_argument("-n", "--connections", type=int, default=2000, help="h2load connections per run (default 2000)")
    p.add_argument("--rounds", type=int, default=9, help="alternating h2load rounds (default 9)")
    p.add_argument("--spread", type=int, default=2000,
                   help="handshakes per Python-client run over many names (default 2000; 0 skips)")
    p.add_argument("--spread-rounds", type=int, default=4, help="alternating Python-client rounds (default 4)")
    p.add_argument("--perf", action="store_true",
                   help="at the end, perf-record each daemon during one h2load run and compare where the CPU "
                        "goes (Python GC vs the rest), in us per handshake")
    p.add_argument("--perf-runs", type=int, default=1, help="alternating perf runs per daemon (default 1; medians)")
    p.add_argument("--threads", type=int, default=4, help="Python client threads (default 4)")
    p.add_argument("--skip-warm-pass", action="store_true",
                   help="do not pre-build all N contexts before the spread rounds")
    p.add_argument("--json", default="cache_scale.json", help="result file under bench/out/")
    return p.parse_args(argv)


def name_of(i: int) -> str:
    return "h%05d.bench.test" % i


def certificate_set(n: int, key_type: str = "ecc") -> tuple[str, list[dict]]:
    """N leaves (one name each) under bench/out/certs-N/ (certs-N-rsa/ for RSA keys), generated once."""
    directory = B.out_dir("certs-%d" % n if key_type == "ecc" else "certs-%d-%s" % (n, key_type))
    manifest = os.path.join(directory, "manifest.json")
    if os.path.exists(manifest):
        with open(manifest) as f:
            entries = json.load(f)
        if len(entries) == n and all(os.path.exists(e["cert"]) for e in (entries[0], entries[-1])):
            return directory, entries
    from kongacme.testing import write_certified_key

    ca = B.load_or_create_ca(directory)
    B.log("generating %d %s certificates in %s (once)" % (n, "ECDSA P-256" if key_type == "ecc" else key_type,
                                                           directory))
    t0 = time.monotonic()
    entries = []
    for i in range(n):
        certified = ca.issue([name_of(i)], key_type=key_type)
        crt, key = write_certified_key(certified, directory, "h%05d" % i)
        entries.append({"cert": crt, "key": key, "name": name_of(i)})
        if i and i % 2000 == 0:
            B.log("  %d/%d" % (i, n))
    with open(manifest, "w") as f:
        json.dump(entries, f)
    B.log("generated in %.1fs" % (time.monotonic() - t0))
    return directory, entries


def perf_compare(procs, daemons: dict, target: str, connections: int, runs: int = 1) -> dict:
    """
    perf-record each daemon during h2load runs (alternating, ``runs`` each);
    median us/handshake per group (scaled to the CPU time measured in that run).
    """
    import signal

    from profile_handshake import analyse_perf

    per: dict = {label: [] for label in daemons}
    labels = list(daemons)
    for rnd in range(runs):
        for label in (labels if rnd % 2 == 0 else labels[::-1]):
            proc, port = daemons[label]
            data = os.path.join(B.out_dir("cache_scale"), "perf-%s-%d.data" % (label, rnd))
            perf = procs.start("cs-perf-" + label, ["perf", "record", "-F", "999", "-p", str(proc.pid), "-o", data])
            time.sleep(1.0)
            c0 = B.cpu_seconds(proc.pid)
            r = B.run_h2load(target, port, connections, connections)
            us = 1e6 * (B.cpu_seconds(proc.pid) - c0) / r["succeeded"]
            os.kill(perf.pid, signal.SIGINT)
            perf.wait(60)
            a = analyse_perf(data, us)
            per[label].append({"us_per_hs": us, "groups": {g["name"]: g["us_per_hs"] for g in a["groups"]}})
            gc_us = sum(v for k, v in per[label][-1]["groups"].items() if k.startswith("Python GC"))
            B.log("perf run %d, %6s cert(s): %.0f us CPU/handshake, of which Python GC %.0f us" % (
                rnd, label, us, gc_us))
    out = {}
    for label, runs_ in per.items():
        names = {g for r in runs_ for g in r["groups"]}
        out[label] = {"us_per_hs_while_sampling": B.median(r["us_per_hs"] for r in runs_),
                      "groups": {g: B.median(r["groups"].get(g, 0.0) for r in runs_) for g in names},
                      "runs": runs_}
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    # This orchestrator (and the Python TLS client it runs) sits on the client
    # core; the daemons are started with taskset on the server core.
    os.sched_setaffinity(0, {int(B.CLIENT_CPU)})
    certdir, entries = certificate_set(args.certs)
    target_index = args.certs // 2
    target = name_of(target_index)
    results: dict = {"args": vars(args), "machine": B.machine_info(), "target": target, "h2load": [], "spread": []}

    with B.Processes() as procs:
        up_port, one_port, many_port = B.free_port(), B.free_port(), B.free_port()
        B.start_haproxy(procs, "cs-upstream", B.haproxy_upstream_config(up_port), up_port, B.CLIENT_CPU)
        routes = [{"hosts": ["*.bench.test"], "upstream": "127.0.0.1:%d" % up_port, "alpn": ["h2", "http/1.1"]}]
        fallback = entries[0]
        one_cfg = B.kongacme_config(B.out_dir("cache_scale", "one"), one_port,
                                    [{"cert": entries[target_index]["cert"], "key": entries[target_index]["key"]}],
                                    routes, fallback)
        many_cfg = B.kongacme_config(B.out_dir("cache_scale", "many"), many_port,
                                     [{"cert": e["cert"], "key": e["key"]} for e in entries], routes, fallback)
        one = B.start_kongacme(procs, "cs-kongacme-1", one_cfg, one_port)
        t0 = time.monotonic()
        many = B.start_kongacme(procs, "cs-kongacme-%d" % args.certs, many_cfg, many_port, timeout=600)
        startup = time.monotonic() - t0
        results["startup_s_many"] = startup
        results["startup_cpu_s_many"] = B.cpu_seconds(many.pid)
        results["rss_kib_after_start"] = {"1": B.rss_kib(one.pid), str(args.certs): B.rss_kib(many.pid)}
        B.log("daemon with %d certificates listening after %.1fs (%.1f CPU-s), RSS %d MiB vs %d MiB" % (
            args.certs, startup, results["startup_cpu_s_many"], B.rss_kib(many.pid) // 1024, B.rss_kib(one.pid) // 1024))
        daemons = {"1": (one, one_port), str(args.certs): (many, many_port)}
        labels = list(daemons)

        for label, (proc, port) in daemons.items():
            B.run_h2load(target, port, 1000, 1000)
        for rnd in range(args.rounds):
            for label in (labels if rnd % 2 == 0 else labels[::-1]):
                proc, port = daemons[label]
                c0 = B.cpu_seconds(proc.pid)
                r = B.run_h2load(target, port, args.connections, args.connections)
                cpu = B.cpu_seconds(proc.pid) - c0
                run = {"round": rnd, "certs": label, "handshakes": r["succeeded"], "server_cpu_s": cpu,
                       "hs_per_cpu_s": r["succeeded"] / cpu, "hs_per_s": r["succeeded"] / r["finished_s"],
                       "failed": r.get("failed", 0) + r.get("errored", 0)}
                results["h2load"].append(run)
                B.log("h2load round %d, %6s cert(s): %6.0f hs/CPU-s  %6.0f hs/s" % (
                    rnd, label, run["hs_per_cpu_s"], run["hs_per_s"]))

        if args.spread:
            many_names = [e["name"] for e in entries]
            if not args.skip_warm_pass:
                proc, port = daemons[str(args.certs)]
                c0 = B.cpu_seconds(proc.pid)
                r = B.tls_client_loop(port, many_names, args.threads)
                cpu = B.cpu_seconds(proc.pid) - c0
                results["warm_pass"] = {"handshakes": r["ok"], "errors": r["errors"], "server_cpu_s": cpu,
                                        "us_cpu_per_hs": 1e6 * cpu / max(r["ok"], 1), "wall_s": r["wall"],
                                        "rss_kib_after": B.rss_kib(proc.pid), "first_error": r["first_error"]}
                B.log("first pass over all %d names (builds every context): %.0f us CPU/handshake, RSS now %d MiB%s" % (
                    len(many_names), results["warm_pass"]["us_cpu_per_hs"], B.rss_kib(proc.pid) // 1024,
                    ", errors %d: %s" % (r["errors"], r["first_error"]) if r["errors"] else ""))
            rng = random.Random(1)
            for rnd in range(args.spread_rounds):
                for label in (labels if rnd % 2 == 0 else labels[::-1]):
                    proc, port = daemons[label]
                    names = (rng.sample(many_names, min(args.spread, len(many_names))) if label != "1"
                             else [target] * args.spread)
                    c0 = B.cpu_seconds(proc.pid)
                    r = B.tls_client_loop(port, names, args.threads)
                    cpu = B.cpu_seconds(proc.pid) - c0
                    run = {"round": rnd, "certs": label, "distinct_names": len(set(names)), "handshakes": r["ok"],
                           "errors": r["errors"], "server_cpu_s": cpu, "hs_per_cpu_s": r["ok"] / cpu,
                           "hs_per_s": r["ok"] / r["wall"], "first_error": r["first_error"]}
                    results["spread"].append(run)
                    B.log("spread round %d, %6s cert(s), %5d names: %6.0f hs/CPU-s  %6.0f hs/s%s" % (
                        rnd, label, run["distinct_names"], run["hs_per_cpu_s"], run["hs_per_s"],
                        "  errors %d" % r["errors"] if r["errors"] else ""))
        results["rss_kib_end"] = {label: B.rss_kib(p.pid) for label, (p, _) in daemons.items()}
        if args.perf:
            results["perf"] = perf_compare(procs, daemons, target, args.connections, args.perf_runs)

    summary: dict = {}
    for kind in ("h2load", "spread"):
        runs = results[kind]
        if not runs:
            continue
        med = {label: B.median(r["hs_per_cpu_s"] for r in runs if r["certs"] == label) for label in labels}
        raw = {label: B.median(r["hs_per_s"] for r in runs if r["certs"] == label) for label in labels}
        paired = []
        for rnd in sorted({r["round"] for r in runs}):
            a = [r for r in runs if r["round"] == rnd and r["certs"] == labels[0]]
            b = [r for r in runs if r["round"] == rnd and r["certs"] == labels[1]]
            if a and b:
                paired.append(b[0]["hs_per_cpu_s"] / a[0]["hs_per_cpu_s"])
        summary[kind] = {"hs_per_cpu_s": med, "hs_per_s": raw,
                         "ratio_many_over_one": med[labels[1]] / med[labels[0]],
                         "ratio_paired_median": B.median(paired), "ratios_paired": [round(x, 3) for x in paired],
                         "ratio_raw_many_over_one": raw[labels[1]] / raw[labels[0]],
                         "all": {label: [round(r["hs_per_cpu_s"]) for r in runs if r["certs"] == label]
                                 for label in labels}}
    results["summary"] = summary
    path = B.save_json(args.json, results)

    print()
    print("Certificate cache scale: %s certificates vs 1 (target name %s)" % (args.certs, target))
    print("daemon start with %d certificates: %.1fs wall, %.1f CPU-s; RSS after start %s KiB" % (
        args.certs, results["startup_s_many"], results["startup_cpu_s_many"], results["rss_kib_after_start"]))
    if "warm_pass" in results:
        w = results["warm_pass"]
        print("first pass over all names (lazy context builds): %.0f us CPU/handshake; RSS after %d KiB" % (
            w["us_cpu_per_hs"], w["rss_kib_after"]))
    for kind, title in (("h2load", "h2load, one SNI name"), ("spread", "Python client, SNI spread over names")):
        if kind not in summary:
            continue
        s = summary[kind]
        print("%-38s %s" % (title, "  ".join("%s cert(s): %.0f hs/CPU-s (%.0f hs/s) %s" % (
            label, s["hs_per_cpu_s"][label], s["hs_per_s"][label], s["all"][label]) for label in labels)))
        print("%-38s ratio %s/1 = %.3f (median of per-round ratios %.3f; raw hs/s %.3f)  [aim: within 5%%]" % (
            "", labels[1], s["ratio_many_over_one"], s["ratio_paired_median"], s["ratio_raw_many_over_one"]))
        print("%-38s per-round ratios %s" % ("", s["ratios_paired"]))
    if "perf" in results:
        print("perf, us CPU per handshake by group (h2load, one name):")
        groups = sorted({g for label in labels for g in results["perf"][label]["groups"]})
        print("  %-70s %s" % ("group", "  ".join("%10s" % (label + " cert") for label in labels)))
        for g in sorted(groups, key=lambda g: -results["perf"][labels[0]]["groups"].get(g, 0)):
            print("  %-70s %s" % (g[:70], "  ".join("%10.0f" % results["perf"][label]["groups"].get(g, 0)
                                                   for label in labels)))
    print("raw results:", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
