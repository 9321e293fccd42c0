#!/usr/bin/env python3
"""
Issue 12, keep-alive: where kongacme's and HAProxy's CPU per request goes.

Starts the same upstream (HAProxy ``http-request return``, core 1), kongacme
(this tree) and HAProxy ``nbthread 1`` on core 0 as ``bench/pump.py`` does,
then for a keep-alive h2load run (``-c`` connections, ``-n`` requests):

- ``cpu``: server CPU per request (utime+stime, read once idle, and each of
  them: user space and the kernel), 3 runs each;
- ``strace``: ``strace -f -c -w`` of each server during one run (system calls
  per request: divide the counts by ``-n``);
- ``pyspy``: ``py-spy record --native -r 1000 -f raw`` of kongacme, then a
  split of the samples by what the innermost frame is (system call, OpenSSL,
  cffi, pyOpenSSL, Twisted's log context, Twisted, kongacme, ...), scaled to
  ``--us`` per request (the unprofiled CPU per request of a ``cpu`` run).
  Samples whose innermost frame is ``epoll_wait`` are left out: py-spy
  cannot tell an idle wait from a busy one there.

Example: ``python3 bench/keepalive_profile.py strace -n 10000 -c 10``.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import time

import benchlib as B

PY_SPY = os.path.join(os.path.dirname(sys.executable), "py-spy")


#: (a piece of the innermost frame's name, what it belongs to), first match wins.
CATEGORIES = (
    ("_cffi_f_", "cffi glue"),
    ("_cffi_backend", "cffi glue"),
    ("_rust.abi3", "OpenSSL"),
    ("libssl.so", "OpenSSL"),
    ("libcrypto.so", "OpenSSL"),
    ("_ssl.cpython", "standard library ssl (C glue)"),
    ("/ssl.py", "standard library ssl (Python)"),
    ("OpenSSL/", "pyOpenSSL (Python)"),
    ("twisted/python/log.py", "Twisted log context (callWithLogger)"),
    ("twisted/python/context.py", "Twisted log context (callWithLogger)"),
    ("twisted/", "Twisted (Python)"),
    ("kongacme/", "kongacme (Python)"),
    ("libc.so", "libc, other"),
)


def category(leaf: str) -> str:
    """What one py-spy frame (``name (file:line)`` or ``name (lib.so)``) belongs to."""
    if re.match(r"(send|recv|epoll_wait) \(libc", leaf):
        return "system call " + leaf.split()[0]
    return next((what for piece, what in CATEGORIES if piece in leaf), "interpreter, other")


def split(path: str, us: float) -> list[tuple[str, float]]:
    counts: collections.Counter = collections.Counter()
    for line in open(path):
        line = line.rstrip("\n")
        if " " not in line:
            continue
        stack, n = line.rsplit(" ", 1)
        what = category(stack.split(";")[-1])
        if what != "system call epoll_wait":
            counts[what] += int(n)
    total = sum(counts.values()) or 1
    return [(what, us * n / total) for what, n in counts.most_common()]


def user_system(pid: int) -> tuple[float, float]:
    """utime and stime of a process, in seconds (``/proc/<pid>/stat``, in ticks)."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / B.CLK_TCK, int(fields[12]) / B.CLK_TCK


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=("cpu", "strace", "pyspy"))
    p.add_argument("-n", type=int, default=10000)
    p.add_argument("-c", type=int, default=10)
    p.add_argument("--us", type=float, default=0.0, help="pyspy: unprofiled µs per request to scale to")
    p.add_argument("--engine", default="", help="kongacme's listen.engine (twisted, lean; default: the config's)")
    args = p.parse_args(argv)
    work = B.out_dir("keepalive_profile")
    ca = B.load_or_create_ca(B.out_dir("ca"))
    host = "bench.test"
    leaf = B.issue_files(ca, work, "leaf-ecc", [host])
    with B.Processes() as procs:
        up, kp, hp = B.free_port(), B.free_port(), B.free_port()
        B.start_haproxy(procs, "kap-upstream", B.haproxy_upstream_config(up), up, B.CLIENT_CPU)
        routes = [{"hosts": [host], "upstream": "127.0.0.1:%d" % up, "alpn": ["http/1.1"]}]
        cfg = B.kongacme_config(work, kp, [{"cert": leaf["cert"], "key": leaf["key"]}], routes, fallback=leaf,
                                engine=args.engine)
        servers = [("kongacme", B.start_kongacme(procs, "kap-kongacme", cfg, kp), kp)]
        if args.mode != "pyspy":
            servers.append(("haproxy", B.start_haproxy(procs, "kap-haproxy", B.haproxy_tls_config(hp, leaf["pem"], up),
                                                       hp, B.SERVER_CPU), hp))
        for name, proc, port in servers:
            B.run_h2load(host, port, 500, 50)  # warm-up
            if args.mode == "cpu":
                for _ in range(3):
                    c0, _ = B.cpu_when_idle(proc.pid)
                    u0, s0 = user_system(proc.pid)
                    r = B.run_h2load(host, port, args.n, args.c)
                    c1, _ = B.cpu_when_idle(proc.pid)
                    u1, s1 = user_system(proc.pid)
                    per = 1e6 / r["succeeded"]
                    print("%-9s %.1f µs per request: user %.1f, system %.1f (%d requests, load %.2f)"
                          % (name, (c1 - c0) * per, (u1 - u0) * per, (s1 - s0) * per, r["succeeded"], B.loadavg()),
                          flush=True)
                continue
            out = os.path.join(work, "%s-%s.txt" % (args.mode, name))
            if args.mode == "strace":
                tracer = subprocess.Popen([shutil.which("strace") or "strace", "-f", "-c", "-w", "-o", out,
                                           "-p", str(proc.pid)])
            else:
                tracer = subprocess.Popen([PY_SPY, "record", "--native", "-r", "1000", "-f", "raw", "-o", out,
                                           "-p", str(proc.pid)])
            time.sleep(1.5)
            r = B.run_h2load(host, port, args.n, args.c)
            time.sleep(0.5)
            tracer.send_signal(2)
            tracer.wait()
            print("%s: %d requests; %s" % (name, r["succeeded"], out))
            if args.mode == "strace":
                print(open(out).read())
            elif args.us:
                for what, us in split(out, args.us):
                    print("  %6.2f µs  %s" % (us, what))
    return 0


if __name__ == "__main__":
    sys.exit(main())
