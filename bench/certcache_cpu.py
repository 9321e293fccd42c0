#!/usr/bin/env python3
"""
CPU a worker spends on a certificate (issue 11, "Memory, round 3"), for the
kongacme tree given (--tree: compare a checkout of the commit before with
this one): in one process, time.thread_time around

fetch
    ``WorkerCertificateCache.answer`` for one entry of the master's
    ``FetchCertificates`` answer (``channel.encode_certificate``: ECDSA
    P-256 leaf + one intermediate), then the first ``connection_for`` of
    that name: what a handshake for a name the worker does not hold pays
    in the worker, besides the round trip to the master;
connection_for
    ``ContextBuilder.connection_for(cache.lookup(name))`` for names held,
    round robin over all of them: what every handshake pays.

Medians over rounds; each round in a fresh cache and builder.

    .venv/bin/python bench/certcache_cpu.py [--tree /path/to/old/checkout]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tree", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                   help="directory holding the kongacme package to measure (default: this checkout)")
    p.add_argument("-n", "--names", type=int, default=300, help="certificates (default 300)")
    p.add_argument("--rounds", type=int, default=7, help="rounds (default 7)")
    p.add_argument("--passes", type=int, default=20, help="connection_for passes over the names per round")
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args(argv)
    sys.path.insert(0, os.path.abspath(args.tree))
    from twisted.internet.task import Clock

    from kongacme.testing import TestCA
    from kongacme.tls.context import ContextBuilder
    from kongacme.workers import channel
    from kongacme.workers.certcache import WorkerCertificateCache

    import kongacme

    ca = TestCA.create()
    intermediate = ca.intermediate()
    fallback = channel.decode_certificate(channel.encode_certificate(ca.issue(["fallback.invalid"])))[1]
    names = ["host%d.example.test" % (i,) for i in range(args.names)]
    entries = [channel.encode_certificate(intermediate.issue([name], include_ca=True), [name]) for name in names]
    fetch, connect = [], []
    for _ in range(args.rounds):
        cache = WorkerCertificateCache(fallback, size=len(names))
        builder = ContextBuilder(Clock())
        builder.connection_for(fallback)
        builder.context_for(channel.decode_certificate(entries[0])[1])  # the shared context exists
        start = time.thread_time()
        for name, entry in zip(names, entries):
            cache.answer([entry], [])
            builder.connection_for(cache.lookup(name))
        fetch.append((time.thread_time() - start) / len(names) * 1e6)
        start = time.thread_time()
        for _ in range(args.passes):
            for name in names:
                builder.connection_for(cache.lookup(name))
        connect.append((time.thread_time() - start) / (len(names) * args.passes) * 1e6)
    result = {
        "tree": os.path.abspath(args.tree),
        "kongacme": os.path.dirname(kongacme.__file__),
        "fetch_us": statistics.median(fetch),
        "fetch_rounds": [round(x, 1) for x in fetch],
        "connection_for_us": statistics.median(connect),
        "connection_for_rounds": [round(x, 1) for x in connect],
        "load": os.getloadavg()[0],
    }
    print(json.dumps(result, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
