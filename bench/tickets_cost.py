#!/usr/bin/env python3
"""
What TLS 1.3 session tickets cost the server per full handshake, in memory
(no sockets): kongacme's server context (ContextBuilder) against a
pyOpenSSL client, server-side time only (``bio_write`` + ``do_handshake`` +
``bio_read`` of both server steps), pinned to core 0.

Variants, each in its own process:

- ``tickets on`` (kongacme's default: OpenSSL sends 2 stateless tickets);
- ``tickets off`` (``session_tickets: false`` = ``OP_NO_TICKET``: OpenSSL
  then sends 2 *stateful* tickets, useless with the session cache off);
- ``NumTickets=1`` and ``NumTickets=0`` with tickets on, through an OpenSSL
  configuration file (``OPENSSL_CONF``, ``system_default`` section,
  ``NumTickets``): pyOpenSSL has no ``set_num_tickets`` and the
  cryptography bindings export no ``SSL_CTX_set_num_tickets``, so this
  process-wide file is the only public way to change the count.

The tickets sent per handshake are counted from the server's records after
the client's Finished.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)

VARIANTS = [
    ("tickets on (2 stateless)", "on", None),
    ("tickets off (OP_NO_TICKET: 2 stateful)", "off", None),
    ("NumTickets=1 via OPENSSL_CONF", "on", 1),
    ("NumTickets=0 via OPENSSL_CONF", "on", 0),
    ("tickets off + NumTickets=0", "off", 0),
]


def child(mode: str, rounds: int, per_round: int) -> dict:
    sys.path.insert(0, REPO)
    from OpenSSL import SSL
    from twisted.internet.task import Clock

    from kongacme.testing import TestCA
    from kongacme.tls.context import ContextBuilder

    cert = TestCA.create().issue(["bench.test"])
    builder = ContextBuilder(Clock(), session_tickets=(mode == "on"))
    client_ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)

    def step(conn):
        try:
            conn.do_handshake()
        except SSL.WantReadError:
            pass

    def out(conn) -> bytes:
        try:
            return conn.bio_read(1 << 16)
        except SSL.WantReadError:
            return b""

    def feed(conn, data: bytes) -> tuple[float, bytes]:
        """One side's step: its input in, its output out, and how long that took."""
        t0 = time.perf_counter()
        conn.bio_write(data)
        step(conn)
        return time.perf_counter() - t0, out(conn)

    def one() -> tuple[float, int]:
        server = builder.connection_for(cert)
        server.set_accept_state()
        client = SSL.Connection(client_ctx, None)
        client.set_connect_state()
        step(client)
        first, flight = feed(server, out(client))
        _, finished = feed(client, flight)
        second, after = feed(server, finished)
        records, i = 0, 0
        while i + 5 <= len(after):
            records += 1
            i += 5 + int.from_bytes(after[i + 3:i + 5], "big")
        return first + second, records

    for _ in range(200):
        one()
    medians = []
    tickets = 0
    for _ in range(rounds):
        runs = [one() for _ in range(per_round)]
        medians.append(statistics.median(r[0] for r in runs) * 1e6)
        tickets = runs[-1][1]
    return {"us_per_handshake": statistics.median(medians), "rounds": [round(m, 1) for m in medians],
            "tickets": tickets}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--per-round", type=int, default=400)
    p.add_argument("--child", default="")
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.rounds, args.per_round)))
        return 0
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, mode, count in VARIANTS:
            env = dict(os.environ)
            if count is not None:
                conf = os.path.join(tmp, "openssl-%d.cnf" % count)
                with open(conf, "w") as f:
                    f.write("openssl_conf = init\n[init]\nssl_conf = ssl\n[ssl]\nsystem_default = tls\n"
                            "[tls]\nNumTickets = %d\n" % count)
                env["OPENSSL_CONF"] = conf
            res = subprocess.run(["taskset", "-c", "0", sys.executable, __file__, "--child", mode,
                                  "--rounds", str(args.rounds), "--per-round", str(args.per_round)],
                                 capture_output=True, text=True, env=env, check=True)
            r = json.loads(res.stdout)
            r["variant"] = label
            results.append(r)
            print("%-42s %2d tickets  %7.1f us server CPU per handshake  rounds %s" % (
                label, r["tickets"], r["us_per_handshake"], r["rounds"]))
    os.makedirs(os.path.join(BENCH, "out"), exist_ok=True)
    with open(os.path.join(BENCH, "out", "tickets_cost.json"), "w") as f:
        json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
