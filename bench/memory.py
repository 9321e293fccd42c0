#!/usr/bin/env python3
"""
Memory per cached certificate, RSA-2048 and ECDSA P-256.

For each key type a fresh Python process (this script with --child):

1. imports kongacme, Twisted, pyOpenSSL, reads N certificate/key PEM pairs
   into memory and builds one throwaway context (so one-time initialisation
   is not counted); gc.collect(); VmRSS from /proc/self/status;
2. parses all N with kongacme.tls.certs.load_certified_key and puts them in
   a kongacme.tls.cache.CertificateCache; gc.collect(); VmRSS;
3. builds each one's SSL context with
   kongacme.tls.context.ContextBuilder(reactor).context_for(ck) (what the
   first handshake for a name does); gc.collect(); VmRSS.

Reported: bytes per certificate for stage 2 (cached) and stage 3 (context
built), and the sum. PEMs are issued once by kongacme.testing.TestCA into
bench/out/memory-certs-<type>-N/. RSA key generation is slow (~70 ms per
key), so by default RSA leaves reuse a pool of 50 distinct keys: memory is
the same, since every load parses its own copy of the key
(--distinct-rsa-keys to generate N keys anyway).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time

import benchlib as B


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", "--certs", type=int, default=2000, help="certificates per key type (default 2000)")
    p.add_argument("--key-types", default="rsa,ecc", help="comma-separated: rsa,ecc (default both)")
    p.add_argument("--repeat", type=int, default=1,
                   help="fresh processes per key type; medians (default 1: the deltas repeat to a few bytes, and "
                        "loading 2,000 RSA keys takes ~2 minutes, see RESULTS.md)")
    p.add_argument("--rsa-key-pool", type=int, default=50, help="distinct RSA keys reused by the leaves (default 50)")
    p.add_argument("--distinct-rsa-keys", action="store_true", help="one RSA key per certificate (slow the first time)")
    p.add_argument("--json", default="memory.json", help="result file under bench/out/")
    p.add_argument("--child", nargs=2, metavar=("DIR", "N"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def generate(key_type: str, n: int, pool: int | None) -> str:
    suffix = "" if key_type == "ecc" or pool is None else "-pool%d" % pool
    directory = B.out_dir("memory-certs-%s-%d%s" % (key_type, n, suffix))
    marker = os.path.join(directory, "done")
    if os.path.exists(marker):
        return directory
    import kongacme.testing as testing

    ca = B.load_or_create_ca(B.out_dir("ca"))
    B.log("issuing %d %s certificates into %s (once)" % (n, key_type, directory))
    original = testing.make_key
    if key_type == "rsa" and pool:
        keys = [original("rsa", 2048) for _ in range(pool)]
        counter = iter(range(10**9))
        testing.make_key = lambda kt="ecc", bits=2048: keys[next(counter) % len(keys)]
    try:
        for i in range(n):
            certified = ca.issue(["m%05d.bench.test" % i], key_type=key_type)
            testing.write_certified_key(certified, directory, "m%05d" % i)
    finally:
        testing.make_key = original
    open(marker, "w").close()
    return directory


def vmrss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def settle() -> int:
    for _ in range(3):
        gc.collect()
    return vmrss()


def child(directory: str, n: int) -> None:
    from twisted.internet import reactor

    from kongacme.tls.cache import CertificateCache
    from kongacme.tls.certs import load_certified_key
    from kongacme.tls.context import ContextBuilder

    pems = []
    for i in range(n):
        stem = os.path.join(directory, "m%05d" % i)
        with open(stem + ".crt", "rb") as f, open(stem + ".key", "rb") as g:
            pems.append((f.read(), g.read()))
    builder = ContextBuilder(reactor)
    warm = load_certified_key(*pems[0], source="warm-up")
    builder.build(warm)
    del warm
    cache = CertificateCache(load_certified_key(*pems[0], source="fallback"))
    r0 = settle()
    o0 = len(gc.get_objects())
    t0 = time.perf_counter()
    loaded = []
    for i, (crt, key) in enumerate(pems):
        ck = load_certified_key(crt, key, source="m%05d" % i)
        cache.put(ck)
        loaded.append(ck)
    t_load = time.perf_counter() - t0
    r1 = settle()
    o1 = len(gc.get_objects())
    t0 = time.perf_counter()
    for ck in loaded:
        builder.context_for(ck)
    t_ctx = time.perf_counter() - t0
    r2 = settle()
    assert len(cache) == n and len(builder) == n
    o2 = len(gc.get_objects())
    print(json.dumps({"rss0": r0, "rss_cached": r1, "rss_contexts": r2, "load_s": t_load, "context_s": t_ctx,
                      "gc_objects_per_cert_cached": (o1 - o0) / n, "gc_objects_per_cert_context": (o2 - o1) / n}))


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        child(args.child[0], int(args.child[1]))
        return 0
    results: dict = {"args": vars(args), "machine": B.machine_info(), "runs": [], "summary": {}}
    env = B.kongacme_env()
    for key_type in args.key_types.split(","):
        pool = None if (key_type == "ecc" or args.distinct_rsa_keys) else args.rsa_key_pool
        directory = generate(key_type, args.certs, pool)
        runs = []
        for _ in range(args.repeat):
            out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", directory, str(args.certs)],
                                 capture_output=True, text=True, env=env, cwd=B.REPO, timeout=600)
            if out.returncode != 0:
                raise RuntimeError(out.stderr)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            r["key_type"] = key_type
            r["cached_bytes_per_cert"] = (r["rss_cached"] - r["rss0"]) / args.certs
            r["context_bytes_per_cert"] = (r["rss_contexts"] - r["rss_cached"]) / args.certs
            r["us_per_load"] = 1e6 * r["load_s"] / args.certs
            r["us_per_context"] = 1e6 * r["context_s"] / args.certs
            runs.append(r)
            results["runs"].append(r)
            B.log("%s: cached %.0f B/cert, +context %.0f B/cert; load %.0f us, context build %.0f us" % (
                key_type, r["cached_bytes_per_cert"], r["context_bytes_per_cert"], r["us_per_load"],
                r["us_per_context"]))
        s = {k: B.median(r[k] for r in runs) for k in ("cached_bytes_per_cert", "context_bytes_per_cert",
                                                         "us_per_load", "us_per_context",
                                                         "gc_objects_per_cert_cached", "gc_objects_per_cert_context")}
        s["total_bytes_per_cert"] = s["cached_bytes_per_cert"] + s["context_bytes_per_cert"]
        s["rsa_key_pool"] = pool
        results["summary"][key_type] = s
    path = B.save_json(args.json, results)
    print()
    print("Memory per certificate (VmRSS deltas / %d certificates, median of %d fresh processes)" % (
        args.certs, args.repeat))
    print("%-6s %16s %18s %12s %14s %16s %14s" % ("key", "cached B/cert", "+context B/cert", "total B/cert",
                                                 "load us/cert", "context us/cert", "GC objs/cert"))
    for key_type, s in results["summary"].items():
        print("%-6s %16.0f %18.0f %12.0f %14.0f %16.0f %9.1f+%.1f" % (
            "RSA" if key_type == "rsa" else "P-256", s["cached_bytes_per_cert"], s["context_bytes_per_cert"],
            s["total_bytes_per_cert"], s["us_per_load"], s["us_per_context"], s["gc_objects_per_cert_cached"],
            s["gc_objects_per_cert_context"]))
    print("(GC objs/cert: objects the cyclic GC tracks per certificate, cached + context stage)")
    print("raw results:", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
