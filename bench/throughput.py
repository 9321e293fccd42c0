#!/usr/bin/env python3
"""
Bulk throughput through the TLS proxy: download SIZE MB (default 100) over
one TLS connection, kongacme vs HAProxy (nbthread 1, mode tcp), both
forwarding to the same plain upstream (bench/bulk_upstream.py, sendfile).

Client: ``curl --http1.1 -o /dev/null`` pinned to core 1 with the upstream;
servers pinned to core 0. Reported per server: MB/s wall-clock (curl's
time_total) and MB per server CPU-second (utime+stime from /proc around the
download). MB = 10^6 bytes. Rounds alternate; medians and ratios reported,
raw numbers in bench/out/throughput.json.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys

import benchlib as B


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size-mb", type=int, default=100, help="MB per download (default 100)")
    p.add_argument("--rounds", type=int, default=7, help="alternating rounds (default 7)")
    p.add_argument("--per-round", type=int, default=3,
                   help="downloads (separate connections) per server per round, CPU summed (default 3)")
    p.add_argument("--key-type", choices=("ecc", "rsa"), default="ecc")
    p.add_argument("--perf", action="store_true",
                   help="afterwards, perf-record kongacme during 3 more downloads and print where its CPU goes "
                        "(us per MB by shared object and symbol)")
    p.add_argument("--json", default="throughput.json", help="result file under bench/out/")
    return p.parse_args(argv)


def payload(size_mb: int) -> str:
    path = os.path.join(B.out_dir(), "payload-%dMB.bin" % size_mb)
    size = size_mb * 10**6
    if not (os.path.exists(path) and os.path.getsize(path) == size):
        chunk = os.urandom(1 << 20)
        with open(path + ".tmp", "wb") as f:
            left = size
            while left > 0:
                f.write(chunk[: min(left, len(chunk))])
                left -= len(chunk)
        os.replace(path + ".tmp", path)
    return path


def download(host: str, port: int) -> dict:
    argv = ["taskset", "-c", B.CLIENT_CPU, "curl", "--http1.1", "-k", "-sS", "-v", "-o", "/dev/null",
            "--connect-to", "%s:%d:127.0.0.1:%d" % (host, port, port),
            "-w", "%{size_download} %{time_total} %{time_appconnect}\\n", "https://%s:%d/" % (host, port)]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    if res.returncode != 0:
        raise RuntimeError("curl failed (%d): %s" % (res.returncode, res.stderr[-2000:]))
    size, total, appconnect = res.stdout.split()
    m = re.search(r"SSL connection using (\S+) / (\S+)", res.stderr)
    alpn = re.search(r"ALPN: server accepted (\S+)", res.stderr) or re.search(r"ALPN, server accepted to use (\S+)",
                                                                            res.stderr)
    return {"bytes": int(size), "time_total": float(total), "time_appconnect": float(appconnect),
            "tls": m.groups() if m else None, "alpn": alpn.group(1) if alpn else None,
            "argv": " ".join(argv)}


def perf_kongacme(procs, proc, host: str, port: int) -> dict:
    import signal
    import time

    from profile_handshake import analyse_perf

    data = os.path.join(B.out_dir("throughput"), "perf.data")
    perf = procs.start("tp-perf", ["perf", "record", "-F", "999", "-g", "-p", str(proc.pid), "-o", data])
    time.sleep(1.0)
    c0 = B.cpu_seconds_sched(proc.pid)
    mb = sum(download(host, port)["bytes"] for _ in range(3)) / 1e6
    cpu = B.cpu_seconds_sched(proc.pid) - c0
    os.kill(perf.pid, signal.SIGINT)
    perf.wait(60)
    us_per_mb = 1e6 * cpu / mb
    result = analyse_perf(data, us_per_mb)
    result["us_cpu_per_mb_while_sampling"] = us_per_mb
    print("\nkongacme bulk profile (perf, %.0f us CPU per MB while sampling):" % us_per_mb)
    for r in result["groups"]:
        print("  %5.1f%%  %7.0f us/MB  %s" % (r["pct"], r["us_per_hs"], r["name"]))
    print("  top symbols:")
    for r in result["symbols"][:15]:
        print("  %5.1f%%  %7.0f us/MB  %s" % (r["pct"], r["us_per_hs"], r["name"]))
    return result


def main(argv=None) -> int:
    args = parse_args(argv)
    work = B.out_dir("throughput")
    ca = B.load_or_create_ca(B.out_dir("ca"))
    host = "bench.test"
    leaf = B.issue_files(ca, work, "leaf-" + args.key_type, [host], key_type=args.key_type)
    data = payload(args.size_mb)
    results: dict = {"args": vars(args), "machine": B.machine_info(), "runs": []}

    with B.Processes() as procs:
        up_port, k_port, h_port = B.free_port(), B.free_port(), B.free_port()
        up = procs.start("bulk-upstream", [sys.executable, os.path.join(B.BENCH, "bulk_upstream.py"), str(up_port), data],
                         cpu=B.CLIENT_CPU)
        B.wait_port(up_port, up)
        cfg = B.kongacme_config(
            work, k_port, certificates=[{"cert": leaf["cert"], "key": leaf["key"]}],
            routes=[{"hosts": [host], "upstream": "127.0.0.1:%d" % up_port, "alpn": ["h2", "http/1.1"]}],
            fallback=leaf)
        servers = {
            "kongacme": (B.start_kongacme(procs, "tp-kongacme", cfg, k_port), k_port),
            "haproxy": (B.start_haproxy(procs, "tp-haproxy", B.haproxy_tls_config(h_port, leaf["pem"], up_port),
                                        h_port, B.SERVER_CPU), h_port),
        }
        for name, (_, port) in servers.items():
            w = download(host, port)  # warm-up
            results.setdefault("negotiated", {})[name] = {"tls": w["tls"], "alpn": w["alpn"]}
            B.log("warm-up %s: %s %s, %.0f MB/s" % (name, w["tls"], w["alpn"], w["bytes"] / 1e6 / w["time_total"]))
        for rnd in range(args.rounds):
            order = ["kongacme", "haproxy"] if rnd % 2 == 0 else ["haproxy", "kongacme"]
            for name in order:
                proc, port = servers[name]
                c0, s0 = B.cpu_seconds(proc.pid), B.cpu_seconds_sched(proc.pid)
                mb = wall = 0.0
                for _ in range(args.per_round):
                    d = download(host, port)
                    if d["bytes"] != args.size_mb * 10**6:
                        raise RuntimeError("%s: got %d bytes" % (name, d["bytes"]))
                    mb += d["bytes"] / 1e6
                    wall += d["time_total"]
                cpu = B.cpu_seconds(proc.pid) - c0
                sched = B.cpu_seconds_sched(proc.pid) - s0
                run = {"round": rnd, "server": name, "mb": mb, "downloads": args.per_round, "wall_s": wall,
                       "server_cpu_s": cpu, "server_cpu_s_schedstat": sched,
                       "mb_per_s": mb / wall, "mb_per_cpu_s": mb / cpu if cpu else float("nan"),
                       "mb_per_cpu_s_schedstat": mb / sched if sched else float("nan"), "curl": d["argv"]}
                results["runs"].append(run)
                B.log("round %d %-8s %.0f MB in %.3fs: %6.0f MB/s, cpu %.2fs (schedstat %.3fs), %6.0f MB/CPU-s" % (
                    rnd, name, mb, wall, run["mb_per_s"], cpu, sched, run["mb_per_cpu_s"]))
        results["rss_kib_end"] = {name: B.rss_kib(p.pid) for name, (p, _) in servers.items()}
        if args.perf:
            results["perf"] = perf_kongacme(procs, servers["kongacme"][0], host, k_port)

    s: dict = {}
    for name in ("kongacme", "haproxy"):
        mine = [r for r in results["runs"] if r["server"] == name]
        s[name] = {"mb_per_s": B.median(r["mb_per_s"] for r in mine),
                   "mb_per_cpu_s": B.median(r["mb_per_cpu_s"] for r in mine),
                   "mb_per_cpu_s_schedstat": B.median(r["mb_per_cpu_s_schedstat"] for r in mine),
                   "all_mb_per_s": [round(r["mb_per_s"]) for r in mine]}
    s["ratio_mb_per_s"] = s["kongacme"]["mb_per_s"] / s["haproxy"]["mb_per_s"]
    s["ratio_mb_per_cpu_s"] = s["kongacme"]["mb_per_cpu_s"] / s["haproxy"]["mb_per_cpu_s"]
    s["ratio_mb_per_cpu_s_schedstat"] = (s["kongacme"]["mb_per_cpu_s_schedstat"]
                                         / s["haproxy"]["mb_per_cpu_s_schedstat"])
    results["summary"] = s
    path = B.save_json(args.json, results)

    print()
    print("Bulk download, %d MB over one TLS connection, %d per server per round, %d rounds" % (
        args.size_mb, args.per_round, args.rounds))
    for name, neg in results.get("negotiated", {}).items():
        print("  %-8s negotiated: %s %s" % (name, neg["tls"], neg["alpn"]))
    print("%-10s %12s %14s %16s   %s" % ("server", "MB/s med", "MB/CPU-s med", "(schedstat)", "all rounds MB/s"))
    for name in ("kongacme", "haproxy"):
        print("%-10s %12.0f %14.0f %16.0f   %s" % (name, s[name]["mb_per_s"], s[name]["mb_per_cpu_s"],
                                               s[name]["mb_per_cpu_s_schedstat"], s[name]["all_mb_per_s"]))
    print("ratio kongacme/HAProxy: MB/s %.2f, MB per CPU-s %.2f (schedstat %.2f)  [aim >= 0.9]" % (
        s["ratio_mb_per_s"], s["ratio_mb_per_cpu_s"], s["ratio_mb_per_cpu_s_schedstat"]))
    print("raw results:", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
