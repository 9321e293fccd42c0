#!/usr/bin/env python3
"""
What one server name held costs a worker, and what a handshake costs the
server, for the two ways of attaching certificates to connections
(issue 11, "Memory, round 2"):

per-certificate
    one ``SSL.Context`` per certificate, carrying its leaf, key and
    intermediates (kongacme before this change; rebuilt here by
    :class:`PerCertificateBuilder`);
shared
    ``kongacme.tls.context.ContextBuilder``: one context per distinct chain
    of intermediates, each connection given its leaf and key
    (``SSL.Connection.use_certificate`` / ``use_privatekey``) from OpenSSL
    objects kept per certificate.

Memory: in a fresh process per measurement (--child), N certificates (ECDSA
P-256 leaf + one intermediate, as an ACME CA issues) are decoded the way a
worker decodes the master's answer (``channel.decode_certificate``); VmRSS
after gc.collect() is read before and after each stage: the CertifiedKey
objects alone, then one connection made for each through either builder
(what the first handshake for a name leaves behind), and the parts (a bare
``SSL_CTX``, a leaf and key as pyOpenSSL objects). Stage worker-cache is
what a worker holds since round 3: the answer taken by
``WorkerCertificateCache.answer`` (no CertifiedKey, the served form only)
and a connection made for each name. Bytes per name = delta / N.

CPU: full TLS 1.3 handshakes in one process over memory BIOs (a pyOpenSSL
client, no resumption, every handshake for another of 200 names, the
connection for a name made the way the TLS pump makes it), alternating
rounds of the two builders; the time counted is the server side only, as CPU
time of the thread (time.thread_time: what other processes do on the core
does not count)
(``connection_for`` + its ``do_handshake`` / BIO calls), and separately the
time ``connection_for`` takes. Medians over rounds.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as B  # noqa: E402
from memory import settle  # noqa: E402

HERE = os.path.abspath(__file__)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", "--names", type=int, default=1000, help="memory: certificates (default 1000)")
    p.add_argument("--repeat", type=int, default=3, help="memory: fresh processes per stage (default 3)")
    p.add_argument("--handshakes", type=int, default=2000, help="cpu: handshakes per round (default 2000)")
    p.add_argument("--rounds", type=int, default=7, help="cpu: rounds per builder, alternating (default 7)")
    p.add_argument("--parts", default="memory,cpu", help="memory, cpu or both (default)")
    p.add_argument("--cpu", default="0", help="pin the measuring processes to this CPU (default 0; '' none)")
    p.add_argument("--stages", default="certified-only,per-certificate,shared,bare-context,openssl-leaf-and-key,"
                   "connection,worker-cache", help="memory stages (default all)")
    p.add_argument("--max-load", type=float, default=0.8)
    p.add_argument("--max-load-wait", type=float, default=60.0)
    p.add_argument("--json", default="tls-memory.json", help="result file under bench/out/")
    p.add_argument("--child", nargs=2, metavar=("STAGE", "FILE"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


# -- certificates ---------------------------------------------------------------------------


def entries(n: int) -> str:
    """``channel.encode_certificate`` forms of n leaves under one intermediate, issued once into bench/out/."""
    path = os.path.join(B.out_dir("tls-memory"), "entries-%d.json" % n)
    if not os.path.exists(path):
        from kongacme.workers import channel

        from kongacme.testing import TestCA

        intermediate = TestCA.create("bench root").intermediate()
        out = []
        for i in range(n):
            certified = intermediate.issue(["m%05d.bench.test" % i], include_ca=True)
            out.append(channel.encode_certificate(certified, certified.names))
        with open(path, "w") as f:
            json.dump(out, f)
    return path


# -- the builder before this change --------------------------------------------------------------


def per_certificate_builder(clock):
    """ContextBuilder as it was: a context per certificate, with its leaf, key and intermediates."""
    import weakref

    from OpenSSL import SSL

    from kongacme.tls.context import ContextBuilder

    class PerCertificateBuilder(ContextBuilder):
        def __init__(self, clock):
            super().__init__(clock)
            self._per: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

        def connection_for(self, certified):
            entry = self._per.get(certified)
            now = self._clock.seconds()
            if entry is None or now - entry[1] >= self.ticket_key_rotation:
                ctx = self.build(certified.chain[1:])
                ctx.use_certificate(certified.chain[0])
                ctx.use_privatekey(certified.key)
                ctx.check_privatekey()
                entry = (ctx, now)
                self._per[certified] = entry
            return SSL.Connection(entry[0], None)

    return PerCertificateBuilder(clock)


def make_builder(kind: str, clock):
    from kongacme.tls.context import ContextBuilder

    return per_certificate_builder(clock) if kind == "per-certificate" else ContextBuilder(clock)


# -- memory (child) ---------------------------------------------------------------------------------


def child_memory(stage: str, path: str) -> dict:
    from OpenSSL import SSL, crypto
    from twisted.internet.task import Clock

    from kongacme.workers import channel

    with open(path) as f:
        raw = f.read()
    encoded = json.loads(raw)
    del raw
    n = len(encoded)
    # Warm-up: one of everything measured, so one-time initialisation is not counted.
    _, warm = channel.decode_certificate(encoded[0])
    for kind in ("per-certificate", "shared"):
        make_builder(kind, Clock()).connection_for(warm)
    del warm
    if stage == "worker-cache":
        from kongacme.workers.certcache import WorkerCertificateCache

        fallback = channel.decode_certificate(encoded[0])[1]
        cache = WorkerCertificateCache(fallback, size=n)
        builder = make_builder("shared", Clock())
        builder.connection_for(fallback)
    r0 = settle()
    # worker-cache: what a worker holds now, no CertifiedKey (all counted as "added").
    held = [] if stage == "worker-cache" else [channel.decode_certificate(entry)[1] for entry in encoded]
    r1 = settle()
    out = {"stage": stage, "names": n, "certified": (r1 - r0) / n}
    keep: list = []
    if stage in ("per-certificate", "shared"):
        builder = make_builder(stage, Clock())
        for certified in held:
            builder.connection_for(certified)  # the connection itself is dropped, as after a handshake
        keep.append(builder)
    elif stage == "bare-context":
        keep.extend(SSL.Context(SSL.TLS_SERVER_METHOD) for _ in held)
    elif stage == "openssl-leaf-and-key":
        keep.extend((crypto.X509.from_cryptography(c.leaf), crypto.PKey.from_cryptography_key(c.key)) for c in held)
    elif stage == "worker-cache":
        cache.answer(encoded, [])
        for entry in encoded:
            builder.connection_for(cache.lookup(entry["names"][0]))
        keep.extend((cache, builder))
    elif stage == "connection":
        builder = make_builder("shared", Clock())
        keep.extend(builder.connection_for(c) for c in held)
        keep.append(builder)
    r2 = settle()
    out["added"] = (r2 - r1) / n
    return out


# -- cpu (in-process) ----------------------------------------------------------------------------


def handshake_rounds(args) -> dict:
    from OpenSSL import SSL
    from twisted.internet.task import Clock

    from kongacme.workers import channel

    with open(entries(200)) as f:
        held = [channel.decode_certificate(e)[1] for e in json.load(f)]
    client_ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    client_ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
    client_ctx.set_options(SSL.OP_NO_TICKET)
    clock = Clock()

    def step(connection) -> bool:
        try:
            connection.do_handshake()
            return True
        except SSL.WantReadError:
            return False

    def drain(connection) -> bytes:
        try:
            return connection.bio_read(65536)
        except SSL.WantReadError:
            return b""

    def one(builder, certified, name: bytes) -> tuple[float, float]:
        client = SSL.Connection(client_ctx, None)
        client.set_connect_state()
        client.set_tlsext_host_name(name)
        t0 = time.thread_time()
        server = builder.connection_for(certified)
        server.set_accept_state()
        t_conn = time.thread_time() - t0
        server_s = t_conn
        done = False
        while not done:
            done = step(client)
            data = drain(client)
            if data:
                t0 = time.thread_time()
                server.bio_write(data)
                step(server)
                answer = drain(server)
                server_s += time.thread_time() - t0
                if answer:
                    client.bio_write(answer)
        return server_s, t_conn

    kinds = ("per-certificate", "shared")
    builders = {kind: make_builder(kind, clock) for kind in kinds}
    names = [c.names[0].encode("ascii") for c in held]
    for kind in kinds:  # warm-up: every name's context / leaf built once, as in a running worker
        for certified, name in zip(held, names):
            one(builders[kind], certified, name)
    per_round: dict[str, list] = {kind: [] for kind in kinds}
    notes = []
    for rnd in range(args.rounds):
        for kind in kinds if rnd % 2 == 0 else reversed(kinds):
            notes.append(B.wait_for_quiet_machine(args.max_load, args.max_load_wait))
            server = conn = 0.0
            gc.collect()
            for i in range(args.handshakes):
                s, c = one(builders[kind], held[i % len(held)], names[i % len(held)])
                server += s
                conn += c
            per_round[kind].append({"server_us": 1e6 * server / args.handshakes,
                                    "connection_for_us": 1e6 * conn / args.handshakes})
            B.log("cpu round %d %s: server %.1f us/handshake, connection_for %.1f us" % (
                rnd, kind, per_round[kind][-1]["server_us"], per_round[kind][-1]["connection_for_us"]))
    summary = {kind: {k: statistics.median(r[k] for r in rounds) for k in ("server_us", "connection_for_us")}
               for kind, rounds in per_round.items()}
    ratios = [s["server_us"] / p["server_us"] for s, p in zip(per_round["shared"], per_round["per-certificate"])]
    summary["paired_ratio_shared_to_per_certificate"] = statistics.median(ratios)
    summary["paired_ratios"] = ratios
    return {"rounds": per_round, "summary": summary, "quiet_machine": notes}


# -- main -----------------------------------------------------------------------------------------


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child_memory(args.child[0], args.child[1])))
        return 0
    if args.cpu:
        os.sched_setaffinity(0, {int(args.cpu)})
    results: dict = {"args": vars(args), "machine": B.machine_info(), "memory": {}, "cpu": None}
    path = entries(args.names)
    env = B.kongacme_env()
    parts = args.parts.split(",")
    for stage in () if "memory" not in parts else args.stages.split(","):
        runs = []
        for _ in range(args.repeat):
            out = subprocess.run([sys.executable, HERE, "--child", stage, path], capture_output=True, text=True,
                                 env=env, cwd=B.REPO, timeout=600)
            if out.returncode != 0:
                raise RuntimeError(out.stderr)
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        results["memory"][stage] = {
            "runs": runs,
            "certified_bytes_per_name": statistics.median(r["certified"] for r in runs),
            "added_bytes_per_name": statistics.median(r["added"] for r in runs),
        }
        B.log("memory %s: CertifiedKey %.0f B/name, then +%.0f B/name" % (
            stage, results["memory"][stage]["certified_bytes_per_name"],
            results["memory"][stage]["added_bytes_per_name"]))
    if "cpu" in parts:
        results["cpu"] = handshake_rounds(args)
    saved = B.save_json(args.json, results)
    print()
    print("Per name held (VmRSS deltas / %d names, median of %d fresh processes), bytes:" % (args.names, args.repeat))
    for stage, m in results["memory"].items():
        print("  %-22s CertifiedKey %6.0f   + %-28s %6.0f   total %6.0f" % (
            stage, m["certified_bytes_per_name"], "its stage", m["added_bytes_per_name"],
            m["certified_bytes_per_name"] + m["added_bytes_per_name"]))
    if results["cpu"] is None:
        print("raw results:", saved)
        return 0
    s = results["cpu"]["summary"]
    print("Server CPU per full TLS 1.3 handshake (in-process, memory BIOs, %d x %d, medians):" % (
        args.rounds, args.handshakes))
    for kind in ("per-certificate", "shared"):
        print("  %-16s %7.1f us (connection_for %5.1f us)" % (kind, s[kind]["server_us"],
                                                             s[kind]["connection_for_us"]))
    print("  shared / per-certificate, paired: %.3f" % s["paired_ratio_shared_to_per_certificate"])
    print("raw results:", saved)
    return 0


if __name__ == "__main__":
    sys.exit(main())
