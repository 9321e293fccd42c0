#!/usr/bin/env python3
"""
What one idle TLS session of a busy certificate costs the server, per
binding (issue 12, session 21): the standard library's ``ssl``
(``StdSession``) against kongacme's own OpenSSL binding
(``kongacme.tls._openssl.Session``), both over the system's OpenSSL.

In a fresh process per binding and repeat (``--child``): one context for
one certificate (ECDSA P-256 leaf and an intermediate, as an ACME CA
issues), then ``-n`` sessions, each handshaken in memory with a
standard-library client (TLS 1.3, the session ticket delivered), then one
request and one reply relayed through it; the clients are dropped, the
server sessions kept. VmRSS after ``gc.collect()`` is read before the
sessions and after; bytes per session = delta / n. What an idle
kept-alive connection's TLS state costs, the sockets and the relay aside.

    python3 bench/session_memory.py -n 2000 --repeat 3
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import ssl
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import benchlib as B  # noqa: E402  (bench/, this script's own directory)


def rss() -> int:
    """This process's VmRSS in bytes."""
    return B.rss_kib(os.getpid()) * 1024


def child(binding: str, count: int) -> dict[str, float]:
    from twisted.internet.task import Clock

    from kongacme.testing import TestCA
    from kongacme.tls.context import ContextBuilder
    from kongacme.tls.openssl import openssl_context
    from kongacme.tls.session import StdSession
    from kongacme.tls.stdlib import std_context

    root = TestCA.create()
    certified = root.intermediate().issue(["a.test"], include_ca=True)
    served = ContextBuilder(Clock()).served(certified)
    alpn = (b"h2", b"http/1.1")
    if binding == "openssl":
        from kongacme.tls import openssl

        assert openssl.compiled is not None, "kongacme.tls._openssl is not built"
        context = openssl_context(served, alpn, True)

        def make() -> object:
            return openssl.compiled.Session(context)  # type: ignore[union-attr]
    else:
        std = std_context(served, alpn, True)

        def make() -> object:
            return StdSession(std)

    client_context = ssl.create_default_context(cadata=root.ca_pem().decode("ascii"))

    def established() -> object:
        session: object = make()
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = client_context.wrap_bio(incoming, outgoing, server_hostname="a.test")
        for _ in range(6):
            try:
                obj.do_handshake()
                done = True
            except ssl.SSLWantReadError:
                done = False
            session.feed(outgoing.read())  # type: ignore[attr-defined]
            try:
                session.do_handshake()  # type: ignore[attr-defined]
            except ssl.SSLWantReadError:
                pass
            incoming.write(session.take())  # type: ignore[attr-defined]
            if done:
                break
        obj.write(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        session.feed(outgoing.read())  # type: ignore[attr-defined]
        assert session.read(1024)  # type: ignore[attr-defined]
        records, _ = session.seal(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")  # type: ignore[attr-defined]
        incoming.write(records)
        assert obj.read(1024).endswith(b"ok")
        return session

    established()  # warm: lazily made OpenSSL and Python state
    gc.collect()
    before = rss()
    kept = [established() for _ in range(count)]
    gc.collect()
    after = rss()
    assert len(kept) == count
    return {"bytes_per_session": (after - before) / count}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", type=int, default=2000, help="sessions per process (default 2000)")
    p.add_argument("--repeat", type=int, default=3, help="fresh processes per binding (default 3)")
    p.add_argument("--child", default="", help=argparse.SUPPRESS)
    p.add_argument("--json", default="session-memory.json", help="result file under bench/out/")
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.n)))
        return 0
    results: dict[str, list[float]] = {"stdlib": [], "openssl": []}
    for _ in range(args.repeat):
        for binding in results:  # interleaved
            out = subprocess.run([sys.executable, __file__, "--child", binding, "-n", str(args.n)],
                                 check=True, capture_output=True, text=True).stdout
            results[binding].append(json.loads(out.strip().splitlines()[-1])["bytes_per_session"])
    for binding, values in results.items():
        print("%-8s %8.0f bytes per idle session (median of %d; all: %s)"
              % (binding, statistics.median(values), len(values), ", ".join("%.0f" % v for v in values)))
    out_dir = os.path.join(HERE, "out")
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, args.json), "w") as f:
        json.dump({"n": args.n, "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
