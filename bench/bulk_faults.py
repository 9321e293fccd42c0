#!/usr/bin/env python3
"""
Issue 12, bulk: page faults and memory of kongacme relaying downloads, per
source tree — what glibc's allocator thresholds (kongacme/allocator.py) are
for.

For each ``--tree`` (a kongacme checkout; its compiled module built in
place), one daemon on core 0 with a route to ``bench/bulk_upstream.py`` on
core 1, its certificate made busy first (20 handshakes, no request: the
standard library's ``ssl``; ``--cold``: not, so the downloads are on
pyOpenSSL, as a certificate's first connections are):

1. ``--downloads`` downloads of ``--size-mb`` one after the other (curl):
   MB per server CPU-second (read once idle) and the daemon's minor page
   faults (``/proc/<pid>/stat``) for each;
2. ``--concurrent`` downloads of 300 MB at once, twice: the daemon's peak
   RSS (``VmHWM``) and its RSS once they are over.

Example: ``python3 bench/bulk_faults.py --tree /tmp/before --tree .``
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import benchlib as B
import pump as P
import throughput as T


def faults(pid: int) -> int:
    with open("/proc/%d/stat" % pid) as f:
        return int(f.read().rsplit(")", 1)[1].split()[7])


def memory(pid: int) -> dict:
    found = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                found[key] = int(value.split()[0]) // 1024
    return found


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tree", action="append", required=True)
    p.add_argument("--size-mb", type=int, default=2000)
    p.add_argument("--downloads", type=int, default=6)
    p.add_argument("--concurrent", type=int, default=16)
    p.add_argument("--cold", action="store_true",
                   help="no handshakes first: the downloads are the certificate's first connections, on "
                        "pyOpenSSL (at most 7 of them: the 8th moves the certificate to the standard library)")
    args = p.parse_args(argv)
    work = B.out_dir("bulk_faults")
    ca = B.load_or_create_ca(B.out_dir("ca"))
    host = "bench.test"
    for tree in args.tree:
        tree = os.path.abspath(tree)
        with B.Processes() as procs:
            ports = {}
            for size in sorted({args.size_mb, 300}):
                port = ports[size] = B.free_port()
                up = procs.start("bf-bulk-%d" % size, [sys.executable, os.path.join(B.BENCH, "bulk_upstream.py"),
                                                       str(port), T.payload(size)], cpu=B.CLIENT_CPU)
                B.wait_port(port, up)
            names = {size: "%d.%s" % (size, host) for size in ports}
            routes = [{"hosts": [names[size]], "upstream": "127.0.0.1:%d" % port, "alpn": ["http/1.1"]}
                      for size, port in ports.items()]
            leaf = B.issue_files(ca, work, "leaf-bf", list(names.values()))
            kport = B.free_port()
            cfg = B.kongacme_config(work, kport, [{"cert": leaf["cert"], "key": leaf["key"]}], routes, fallback=leaf)
            proc = P.start_kongacme_from(procs, "bf-kongacme", tree, cfg, kport)
            if not args.cold:
                P.handshakes_only(names[args.size_mb], kport, 20)
            label = os.path.basename(tree.rstrip("/")) or tree
            for _ in range(args.downloads):
                c0, _ = B.cpu_when_idle(proc.pid)
                f0 = faults(proc.pid)
                r = T.download(names[args.size_mb], kport)
                c1, _ = B.cpu_when_idle(proc.pid)
                print("%s: %.0f MB per CPU-second, %d minor faults" % (
                    label, r["bytes"] / 1e6 / (c1 - c0), faults(proc.pid) - f0), flush=True)
            time.sleep(1)
            start = memory(proc.pid)
            argv = ["curl", "--http1.1", "-k", "-sS", "-o", "/dev/null", "--connect-to",
                    "%s:%d:127.0.0.1:%d" % (names[300], kport, kport), "https://%s:%d/" % (names[300], kport)]
            for _ in range(2):
                for c in [subprocess.Popen(argv) for _ in range(args.concurrent)]:
                    c.wait()
            time.sleep(2)
            end = memory(proc.pid)
            print("%s: %d downloads of 300 MB at once, twice: RSS %d MiB before, peak %d, after %d" % (
                label, args.concurrent, start["VmRSS"], end["VmHWM"], end["VmRSS"]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
