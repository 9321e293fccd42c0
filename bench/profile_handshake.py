#!/usr/bin/env python3
"""
CPU profile of kongacme's handshake path under h2load load (full TLS 1.3
handshakes, ECDSA P-256, one new connection per request, each forwarded to
a fast upstream).

Three measurements of the same daemon, one after the other:

1. unprofiled: server CPU microseconds per handshake (median of rounds);
   every figure below is scaled to this, so profiler overhead does not
   inflate the microseconds;
2. py-spy (``record --native --format raw``, attached by PID): Python
   functions with self and total time, and native frames (OpenSSL inside
   cryptography's _rust.abi3.so, libc system calls, the GC) as leaves;
3. perf (``record -g -p PID``): time per shared object and symbol, which
   splits OpenSSL crypto math vs OpenSSL bookkeeping vs the Python
   interpreter vs the kernel exactly (py-spy cannot see inside syscalls).

Outputs under bench/out/profile/: pyspy-raw.txt (collapsed stacks: open in
https://www.speedscope.app or flamegraph.pl), perf.data, summary.json and
profile.md (the tables printed at the end).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import benchlib as B


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", "--connections", type=int, default=3000,
                   help="connections per h2load run (= -n = -c; default 3000)")
    p.add_argument("--rounds", type=int, default=3, help="unprofiled rounds for the CPU/handshake baseline (default 3)")
    p.add_argument("--profile-runs", type=int, default=2,
                   help="h2load runs while py-spy samples (default 2)")
    p.add_argument("--rate", type=int, default=250,
                   help="py-spy samples per second (default 250; 1000 with --native slows the daemon ~10x)")
    p.add_argument("--engine", default="", help="kongacme's listen.engine (twisted, lean; default: the config's)")
    p.add_argument("--no-pyspy", action="store_true", help="skip py-spy")
    p.add_argument("--no-perf", action="store_true", help="skip perf")
    p.add_argument("--haproxy", action="store_true",
                   help="also perf-record HAProxy (nbthread 1, mode tcp, same certificate and load) for comparison")
    p.add_argument("--top", type=int, default=30, help="rows in the function tables (default 30)")
    p.add_argument("--analyse-only", action="store_true",
                   help="re-analyse bench/out/profile/{pyspy-raw.txt,perf.data,summary.json} without running")
    return p.parse_args(argv)


# -- classification -----------------------------------------------------------------------

_LINE = re.compile(r":\d+\)$")
_CRYPTO_MATH = re.compile(
    r"(ecp_nistz256|nistz256|x25519|fe_|fe51|fe64|curve25519|bn_|BN_|sha256|sha512|SHA256|SHA512|sha1_|"
    r"aes|AES|gcm|GCM|chacha|poly1305|ecdsa_|ECDSA_|ec_GFp|EC_POINT|ossl_ec_|ossl_ecx|x448|keccak|"
    r"ossl_bn|RAND_|rand_|drbg|ctr_|hmac|HMAC|hkdf|HKDF|tls13_hkdf|EVP_Digest|ossl_sha)")


_GC = re.compile(r"(gc_collect|collect_with|visit_decref|visit_reachable|subtract_refs|move_unreachable|"
                 r"update_refs|deduce_unreachable|_traverse|VisitInstanceAttributes|move_legacy_finalizers|"
                 r"gc_list|handle_legacy_finalizers|delete_garbage)")


def function_of(frame: str) -> str:
    """'func (path:line)' -> 'func (path)'; unresolved addresses merged per object."""
    if frame.startswith("0x") and " (" in frame:
        return "<unresolved> (" + frame.split(" (", 1)[1]
    return _LINE.sub(")", frame)


def leaf_category(frame: str) -> str:
    """What kind of work a leaf frame (where the CPU was) is."""
    if "_rust.abi3.so" in frame:
        name = frame.split(" (", 1)[0]
        return "OpenSSL: crypto math" if _CRYPTO_MATH.search(name) else "OpenSSL: handshake bookkeeping (ASN.1, alloc, ex_data, providers)"
    if "(libc.so" in frame:
        name = frame.split(" (", 1)[0]
        if name.startswith("0x") or name in ("malloc", "free", "cfree", "realloc", "calloc", "memcpy", "memmove",
                                             "memset", "_int_malloc", "_int_free", "strlen"):
            return "libc (malloc/memcpy/other)"
        return "system calls (kernel time inside; see perf)"
    if "(libpython" in frame and _GC.search(frame.split(" (", 1)[0]):
        return "Python GC"
    if "(libpython" in frame:
        return "Python interpreter (C)"
    if "_cffi_backend" in frame:
        return "cffi call overhead"
    if ".so" in frame or frame.startswith("0x"):
        return "other native"
    path = frame.rsplit("(", 1)[-1]
    for prefix, label in (
        ("kongacme/tls/clienthello.py", "kongacme ClientHello parsing"),
        ("kongacme/tls/", "kongacme TLS protocol/context (Python)"),
        ("kongacme/proxy/", "kongacme proxy/relay (Python)"),
        ("kongacme/", "kongacme other (Python)"),
        ("twisted/protocols/tls.py", "Twisted TLSMemoryBIOProtocol (Python)"),
        ("twisted/internet/", "Twisted reactor/TCP/Deferred (Python)"),
        ("twisted/python/", "Twisted log context/failure (Python)"),
        ("twisted/logger/", "Twisted logger (Python)"),
        ("twisted/protocols/policies.py", "Twisted ProtocolWrapper (Python)"),
        ("OpenSSL/", "pyOpenSSL wrappers (Python)"),
        ("interface/", "zope.interface (Python)"),
        ("ipaddress.py", "ipaddress (upstream endpoint)"),
        ("attr/", "attrs (Python)"),
    ):
        if path.startswith(prefix) or ("/" + prefix) in path:
            return label
    return "other Python"


# Stages of the handshake path: (label, frame name patterns). A stack
# counts for the first stage whose pattern appears anywhere in it, walking
# from the leaf upwards, so nested stages are not double-counted.
STAGES = [
    ("OpenSSL SSL_do_handshake (Connection.do_handshake)", ("Connection.do_handshake (OpenSSL/SSL.py",)),
    ("SSL.Connection() creation + context lookup", ("SNIConnectionCreator.serverConnectionForTLS",
                                                    "ContextBuilder.connection_for")),
    ("ClientHello parsing (parse_client_hello)", ("parse_client_hello (kongacme/tls/clienthello.py",)),
    ("upstream connect (handshakeCompleted -> endpoint.connect, connect completion)",
     ("ProxyServerProtocol.handshakeCompleted", "BaseClient.doConnect", "BaseClient._connectDone",
      "BaseClient.failIfNotConnected", "DirectConnect.", "ProxyServerProtocol._dial_next")),
    ("upstream connected: registerProducer, first write", ("ProxyServerProtocol._upstream_connected",)),
    ("relaying request/response bytes", ("ProxyServerProtocol.dataReceived", "ProxyServerProtocol._upstream_data")),
    ("TLS record I/O: Connection.recv/send/bio_*", ("Connection.recv (OpenSSL", "Connection.send (OpenSSL",
                                                     "Connection.bio_read", "Connection.bio_write",
                                                     "Connection.shutdown", "Connection.bio_shutdown",
                                                     "TLSPump._drain", "TLSPump.write")),
    ("connection teardown (connectionLost, close)", ("connectionLost", "loseConnection", "_closeSocket",
                                                     "readConnectionLost", "_disconnectSelectable",
                                                     "_closeWriteConnection", "loseWriteConnection")),
    ("accept (tcp.Port.doRead)", ("Port.doRead",)),
    ("socket writes (FileDescriptor.doWrite, flushed later by the reactor)", ("FileDescriptor.doWrite",)),
    ("timers (callLater/cancel, handshake deadline, idle timer)", ("ReactorBase.callLater", "DelayedCall.",
                                                                   "ReactorBase.runUntilCurrent", "TimerWheel.",
                                                                   "Deadline.")),
    ("GC", ("gc_collect",)),
]


def stage_of(frames: list[str]) -> str:
    joined = frames  # leaf last
    for frame in reversed(joined):
        for label, patterns in STAGES:
            if any(p in frame for p in patterns):
                return label
    return "reactor loop (epoll_wait, dispatch, log context) and other"


def analyse_pyspy(path: str, us_per_hs: float, top: int) -> dict:
    self_c: collections.Counter = collections.Counter()
    total_c: collections.Counter = collections.Counter()
    cats: collections.Counter = collections.Counter()
    stages: collections.Counter = collections.Counter()
    total = 0
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line or " " not in line:
                continue
            stack, n = line.rsplit(" ", 1)
            n = int(n)
            frames = stack.split(";")
            total += n
            leaf = frames[-1]
            self_c[function_of(leaf)] += n
            for fn in {function_of(fr) for fr in frames}:
                total_c[fn] += n
            cats[leaf_category(leaf)] += n
            stages[stage_of(frames)] += n

    def rows(counter, limit=None):
        return [{"name": k, "samples": v, "pct": 100.0 * v / total, "us_per_hs": us_per_hs * v / total}
                for k, v in counter.most_common(limit)]

    # Total-time table: leave out the reactor scaffolding every stack shares.
    scaffolding = ("<module>", "run (twisted", "runApp", "ApplicationRunner", "runReactorWithLogging",
                   "ReactorBase.run (", "ReactorBase.mainLoop", "EPollReactor.doPoll", "callWithLogger",
                   "callWithContext", "_PollLikeMixin._doReadOrWrite", "postApplication", "startReactor",
                   "<unresolved>")
    total_filtered = collections.Counter(
        {k: v for k, v in total_c.items() if not any(x in k for x in scaffolding)})
    return {
        "samples": total,
        "self": rows(self_c, top),
        "total": rows(total_filtered, top),
        "categories": rows(cats),
        "stages": rows(stages),
    }


def analyse_perf(data: str, us_per_hs: float) -> dict:
    text = subprocess.run(
        ["perf", "report", "-i", data, "--stdio", "--no-children", "--sort", "dso,sym", "-g", "none",
         "-F", "overhead,dso,sym", "--field-separator=|"],
        capture_output=True, text=True).stdout
    by_dso: collections.Counter = collections.Counter()
    by_sym: collections.Counter = collections.Counter()
    groups: collections.Counter = collections.Counter()
    for line in text.splitlines():
        if line.startswith("#") or "|" not in line:
            continue
        pct, dso, sym = (x.strip() for x in line.split("|", 2))
        try:
            pct_f = float(pct.rstrip("%"))
        except ValueError:
            continue
        sym = re.sub(r"^\[[.k]\]\s*", "", sym)
        by_dso[dso] += pct_f
        by_sym["%s  [%s]" % (sym, dso)] += pct_f
        if dso.startswith("_rust.abi3"):
            g = "OpenSSL 4.0 (cryptography wheel): crypto math" if _CRYPTO_MATH.search(sym) else \
                "OpenSSL 4.0 (cryptography wheel): bookkeeping (ASN.1, alloc, ex_data, providers, state machine)"
        elif dso.startswith(("libcrypto", "libssl")):
            g = "OpenSSL 3.0 (Debian libcrypto/libssl, symbols partly stripped)"
        elif dso == "haproxy":
            g = "haproxy (its own code)"
        elif dso.startswith("libpython"):
            g = "Python GC (cyclic collector)" if _GC.search(sym) else "Python interpreter (libpython, excl. GC)"
        elif dso.startswith("[kernel"):
            g = "kernel (TCP, epoll, syscalls, page faults)"
        elif dso.startswith("libc"):
            g = "libc (malloc, memcpy, syscall wrappers)"
        elif "_cffi_backend" in dso:
            g = "cffi"
        else:
            g = "other (%s)" % dso
        groups[g] += pct_f

    def rows(counter, limit=None):
        return [{"name": k, "pct": v, "us_per_hs": us_per_hs * v / 100.0} for k, v in counter.most_common(limit)]

    return {"groups": rows(groups), "dso": rows(by_dso, 15), "symbols": rows(by_sym, 40)}


# -- running -----------------------------------------------------------------------------------


def reanalyse(args) -> int:
    import json

    work = B.out_dir("profile")
    with open(os.path.join(work, "summary.json")) as f:
        summary = json.load(f)
    args.rate = summary["args"]["rate"]
    us = summary["unprofiled_us_per_hs"]
    if os.path.exists(os.path.join(work, "pyspy-raw.txt")) and "pyspy" in summary:
        summary["pyspy"] = analyse_pyspy(os.path.join(work, "pyspy-raw.txt"), us, args.top)
    if os.path.exists(os.path.join(work, "perf.data")) and "perf" in summary:
        summary["perf"] = analyse_perf(os.path.join(work, "perf.data"), us)
    report = render(summary, args)
    with open(os.path.join(work, "profile.md"), "w") as f:
        f.write(report)
    B.save_json("profile/summary.json", summary)
    print(report)
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.analyse_only:
        return reanalyse(args)
    work = B.out_dir("profile")
    ca = B.load_or_create_ca(B.out_dir("ca"))
    host = "bench.test"
    leaf = B.issue_files(ca, work, "leaf", [host])
    summary: dict = {"args": vars(args), "machine": B.machine_info()}
    pyspy = shutil.which("py-spy")
    if not args.no_pyspy and pyspy is None:
        B.log("py-spy not found (pip install py-spy); skipping it")
        args.no_pyspy = True
    if not args.no_perf and shutil.which("perf") is None:
        B.log("perf not found (apt-get install linux-perf); skipping it")
        args.no_perf = True

    with B.Processes() as procs:
        up_port, k_port = B.free_port(), B.free_port()
        B.start_haproxy(procs, "prof-upstream", B.haproxy_upstream_config(up_port), up_port, B.CLIENT_CPU)
        cfg = B.kongacme_config(
            work, k_port, certificates=[{"cert": leaf["cert"], "key": leaf["key"]}],
            routes=[{"hosts": [host], "upstream": "127.0.0.1:%d" % up_port, "alpn": ["h2", "http/1.1"]}],
            fallback=leaf, engine=args.engine)
        k = B.start_kongacme(procs, "prof-kongacme", cfg, k_port)
        B.run_h2load(host, k_port, 1000, 1000)

        def measured_run() -> tuple[int, float]:
            c0 = B.cpu_seconds(k.pid)
            r = B.run_h2load(host, k_port, args.connections, args.connections)
            return r["succeeded"], B.cpu_seconds(k.pid) - c0

        base = []
        for _ in range(args.rounds):
            ok, cpu = measured_run()
            base.append(1e6 * cpu / ok)
            B.log("unprofiled: %d hs, %.1f us CPU per handshake" % (ok, base[-1]))
        us_per_hs = B.median(base)
        summary["unprofiled_us_per_hs"] = us_per_hs
        summary["unprofiled_runs_us_per_hs"] = base

        if not args.no_pyspy:
            raw = os.path.join(work, "pyspy-raw.txt")
            spy = procs.start("py-spy", [pyspy, "record", "--pid", str(k.pid), "--rate", str(args.rate), "--native",
                                         "--format", "raw", "--output", raw])
            time.sleep(1.5)
            hs = cpu = 0.0
            for _ in range(args.profile_runs):
                ok, c = measured_run()
                hs += ok
                cpu += c
            os.kill(spy.pid, signal.SIGINT)
            try:
                spy.wait(60)
            except subprocess.TimeoutExpired:
                procs.stop(spy)
            summary["pyspy_us_per_hs_while_sampling"] = 1e6 * cpu / hs
            B.log("py-spy: %d hs, %.1f us CPU per handshake while sampling" % (hs, 1e6 * cpu / hs))
            if os.path.exists(raw):
                summary["pyspy"] = analyse_pyspy(raw, us_per_hs, args.top)
            else:
                B.log("py-spy wrote nothing:\n" + B.tail(spy.bench_log))

        if not args.no_perf:
            data = os.path.join(work, "perf.data")
            perf = procs.start("perf", ["perf", "record", "-F", "999", "-g", "-p", str(k.pid), "-o", data])
            time.sleep(1.0)
            ok, cpu = measured_run()
            os.kill(perf.pid, signal.SIGINT)
            try:
                perf.wait(60)
            except subprocess.TimeoutExpired:
                procs.stop(perf)
            summary["perf_us_per_hs_while_sampling"] = 1e6 * cpu / ok
            B.log("perf: %d hs, %.1f us CPU per handshake while sampling" % (ok, 1e6 * cpu / ok))
            summary["perf"] = analyse_perf(data, us_per_hs)

        if args.haproxy and not args.no_perf:
            h_port = B.free_port()
            h = B.start_haproxy(procs, "prof-haproxy", B.haproxy_tls_config(h_port, leaf["pem"], up_port), h_port,
                                B.SERVER_CPU)
            B.run_h2load(host, h_port, 1000, 1000)
            base_h = []
            for _ in range(args.rounds):
                c0 = B.cpu_seconds(h.pid)
                r = B.run_h2load(host, h_port, args.connections, args.connections)
                base_h.append(1e6 * (B.cpu_seconds(h.pid) - c0) / r["succeeded"])
            us_h = B.median(base_h)
            data = os.path.join(work, "perf-haproxy.data")
            perf = procs.start("perf-haproxy", ["perf", "record", "-F", "999", "-g", "-p", str(h.pid), "-o", data])
            time.sleep(1.0)
            B.run_h2load(host, h_port, args.connections, args.connections)
            os.kill(perf.pid, signal.SIGINT)
            perf.wait(60)
            summary["haproxy_unprofiled_us_per_hs"] = us_h
            summary["haproxy_perf"] = analyse_perf(data, us_h)
            B.log("haproxy: %.0f us CPU per handshake (rounds %s)" % (us_h, ", ".join("%.0f" % x for x in base_h)))

    report = render(summary, args)
    with open(os.path.join(work, "profile.md"), "w") as f:
        f.write(report)
    B.save_json("profile/summary.json", summary)
    print(report)
    print("files:", work)
    return 0


def render(s: dict, args) -> str:
    out = []
    w = out.append
    w("# kongacme handshake profile\n")
    w("Unprofiled: **%.0f us server CPU per handshake** (%.0f handshakes per CPU-second; rounds: %s).\n" % (
        s["unprofiled_us_per_hs"], 1e6 / s["unprofiled_us_per_hs"],
        ", ".join("%.0f" % x for x in s["unprofiled_runs_us_per_hs"])))
    if "perf" in s:
        w("## perf: where the CPU goes (self time, by shared object)\n")
        w("While sampling: %.0f us/handshake. Microseconds are scaled to the unprofiled figure.\n" %
          s["perf_us_per_hs_while_sampling"])
        w("| group | % | us/handshake |\n|---|---:|---:|")
        for r in s["perf"]["groups"]:
            w("| %s | %.1f | %.0f |" % (r["name"], r["pct"], r["us_per_hs"]))
        w("\nTop symbols (self):\n")
        w("| symbol [object] | % | us/handshake |\n|---|---:|---:|")
        for r in s["perf"]["symbols"][:25]:
            w("| `%s` | %.1f | %.1f |" % (r["name"], r["pct"], r["us_per_hs"]))
        w("")
    if "haproxy_perf" in s:
        w("## HAProxy for comparison (perf, same load): %.0f us CPU per handshake\n" % s["haproxy_unprofiled_us_per_hs"])
        w("| group | % | us/handshake |\n|---|---:|---:|")
        for r in s["haproxy_perf"]["groups"]:
            w("| %s | %.1f | %.0f |" % (r["name"], r["pct"], r["us_per_hs"]))
        w("")
    if "pyspy" in s:
        p = s["pyspy"]
        w("## py-spy (%d samples at %d Hz, --native)\n" % (p["samples"], args.rate))
        w("While sampling: %.0f us/handshake. Microseconds are scaled to the unprofiled figure.\n" %
          s["pyspy_us_per_hs_while_sampling"])
        w("### Stages of the handshake path (each stack counted once, innermost stage wins)\n")
        w("| stage | % | us/handshake |\n|---|---:|---:|")
        for r in p["stages"]:
            w("| %s | %.1f | %.0f |" % (r["name"], r["pct"], r["us_per_hs"]))
        w("\n### Where the CPU was (leaf frame category)\n")
        w("| category | % | us/handshake |\n|---|---:|---:|")
        for r in p["categories"]:
            w("| %s | %.1f | %.0f |" % (r["name"], r["pct"], r["us_per_hs"]))
        w("\n### Top functions by self time\n")
        w("| function | % | us/handshake |\n|---|---:|---:|")
        for r in p["self"]:
            w("| `%s` | %.1f | %.1f |" % (r["name"], r["pct"], r["us_per_hs"]))
        w("\n### Top functions by total time (reactor scaffolding omitted)\n")
        w("| function | % | us/handshake |\n|---|---:|---:|")
        for r in p["total"]:
            w("| `%s` | %.1f | %.1f |" % (r["name"], r["pct"], r["us_per_hs"]))
        w("")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main())
