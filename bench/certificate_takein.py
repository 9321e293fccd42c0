#!/usr/bin/env python3
"""
Issue 12, session 24: the CPU of taking a certificate into kongacme's own
OpenSSL binding (``kongacme.tls.openssl.openssl_certificate``: the leaf
and key converted to the binding's ``Certificate``), which a certificate's
first connection pays since session 24 (its second before), per key type,
for each kongacme tree given (``--tree``: a checkout of the commit before,
and this one).

In a fresh process per tree and key type: ``--certs`` certificates in
their served form (``ContextBuilder.served``, what a worker holds), then
``time.thread_time`` around one ``openssl_certificate`` per certificate,
repeated ``--rounds`` times over fresh certificates; medians.

    .venv/bin/python bench/certificate_takein.py --tree /tmp/before --tree .
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

KEY_TYPES = (("ecc", 0), ("rsa", 2048), ("rsa", 4096))


def child(tree: str, key_type: str, bits: int, certs: int, rounds: int) -> dict:
    sys.path.insert(0, tree)
    import time
    import warnings

    warnings.simplefilter("ignore", DeprecationWarning)
    from twisted.internet.task import Clock

    from kongacme.testing import TestCA
    from kongacme.tls.context import ContextBuilder
    from kongacme.tls.openssl import openssl_certificate

    ca = TestCA.create().intermediate()
    builder = ContextBuilder(Clock())
    per: list[float] = []
    for _ in range(rounds):
        served = [builder.served(ca.issue(["n%d.test" % i], key_type=key_type, rsa_bits=bits or 2048,
                                          include_ca=True)) for i in range(certs)]
        t0 = time.thread_time()
        for one in served:
            openssl_certificate(one)
        per.append(1e6 * (time.thread_time() - t0) / certs)
    return {"us": statistics.median(per), "rounds": per}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tree", action="append", help="kongacme checkout (repeatable; default: this one)")
    p.add_argument("--certs", type=int, default=0, help="certificates per round (default: 200 ECDSA, 5 RSA)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json", help="write the figures here")
    p.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        tree, key_type, bits, certs, rounds = args.child
        print(json.dumps(child(tree, key_type, int(bits), int(certs), int(rounds))))
        return 0
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    trees = [os.path.abspath(t) for t in (args.tree or [here])]
    results: dict = {}
    for key_type, bits in KEY_TYPES:
        label = key_type if not bits else "%s-%d" % (key_type, bits)
        certs = args.certs or (200 if key_type == "ecc" else 5)
        for tree in trees:
            out = subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--child", tree, key_type, str(bits), str(certs),
                 str(args.rounds)],
                check=True, capture_output=True, text=True, cwd=tree,
            ).stdout
            figures = json.loads(out.strip().splitlines()[-1])
            results.setdefault(label, {})[tree] = figures
            print("%-9s %-30s %10.0f us per certificate (rounds: %s)" % (
                label, tree, figures["us"], ", ".join("%.0f" % r for r in figures["rounds"])), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
