#!/usr/bin/env python3
"""
Issue 12, session 22: what a certificate served on the own binding's
shared contexts costs a process in memory (``kongacme.tls.stdlib``: from a
certificate's second connection on, its leaf and key as
``kongacme.tls._openssl.Certificate`` objects, up to ``OWN_CERTIFICATES``).

In a fresh process per repeat (``--child``): N certificates (ECDSA P-256
leaf and one intermediate, as an ACME CA issues) in their served form
(pyOpenSSL objects, what a worker holds per name); VmRSS after
``gc.collect()`` is read before and after each stage:

first
    one session per certificate from ``ContextBuilder.session_for``, each
    dropped at once: a certificate's first connection (pyOpenSSL, its
    chain's shared context);
second
    a second session per certificate, dropped at once: the own binding's
    shared context, and the certificate's ``Certificate`` kept.

Bytes per name = delta / N. Medians of ``--repeat`` processes.

    python3 bench/certificate_memory.py -n 2000 --repeat 3
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys

import benchlib as B


def rss_bytes() -> int:
    return B.rss_kib(os.getpid()) * 1024


def child(n: int) -> dict:
    sys.path.insert(0, B.REPO)
    from twisted.internet.task import Clock

    from kongacme.testing import TestCA
    from kongacme.tls import openssl
    from kongacme.tls.context import ContextBuilder

    if openssl.compiled is None:
        raise SystemExit("kongacme.tls._openssl is not built")
    ca = TestCA.create().intermediate()
    builder = ContextBuilder(Clock())
    builder.std.certificate_limit = n
    served = [builder.served(ca.issue(["n%d.test" % i], include_ca=True)) for i in range(n)]

    class Owner:
        alpn_allowed = (b"h2", b"http/1.1")

    alpn = Owner.alpn_allowed
    out = {}
    gc.collect()
    before = rss_bytes()
    for s in served:
        builder.session_for(s, alpn, Owner()).release()
    gc.collect()
    after_first = rss_bytes()
    for s in served:
        session = builder.session_for(s, alpn, Owner())
        assert isinstance(session, openssl.compiled.Session), type(session)
        session.release()
    gc.collect()
    after_second = rss_bytes()
    assert builder.std.certificates() == n, builder.std.certificates()
    out["first"] = (after_first - before) / n
    out["second"] = (after_second - after_first) / n
    out["shared_contexts"] = builder.std.shared_contexts()
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", type=int, default=2000, help="certificates")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.n)))
        return 0
    runs = []
    for _ in range(args.repeat):
        res = subprocess.run([sys.executable, __file__, "--child", "-n", str(args.n)], capture_output=True,
                             text=True, check=True, cwd=B.REPO)
        runs.append(json.loads(res.stdout.strip().splitlines()[-1]))
        B.log("run: %s" % (runs[-1],))
    print("bytes per certificate (median of %d processes, %d certificates each):" % (args.repeat, args.n))
    for stage in ("first", "second"):
        print("  %-7s %8.0f" % (stage, B.median(r[stage] for r in runs)))
    print("shared contexts:", runs[-1]["shared_contexts"])
    B.save_json("certificate_memory.json", {"args": vars(args), "runs": runs, "machine": B.machine_info()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
