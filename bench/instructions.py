#!/usr/bin/env python3
"""
Instructions per full TLS handshake, counted by valgrind's callgrind: a
measure that does not move with the machine's load, for telling apart
changes of a few percent that the CPU-time benchmarks (``pump.py``) cannot
on these shared, noisy cores.

Each tree's daemon (``--tree``, repeatable; the first is this checkout by
default) runs under ``valgrind --tool=callgrind`` with
the same configuration as ``pump.py``'s handshakes (one leaf, one route to a
local HAProxy upstream, the default engine). After a warm-up, callgrind's
counters are dumped (``callgrind_control -d``, which also zeroes them), ``-n``
handshakes run (h2load, one request per connection, at most ``-c`` at a
time), and the next dump holds their count. Reported: instructions per handshake in
the whole process and split by object (the interpreter, OpenSSL in
cryptography's wheel, libc, other), and each tree's ratio to the first.

What it does not count: the kernel (system calls are a third of a
handshake's CPU), and cycles: valgrind's CPU hides instruction-set
extensions, so OpenSSL takes generic code paths and its share here is larger
than on the real CPU. Use it for A/B of user-space changes, not for
ratios against other servers.

    python3 bench/instructions.py --tree /tmp/before --tree . -n 600

With ``-n`` larger than ``-c`` each connection carries ``-n``/``-c``
requests (h2load keeps them alive), and the count is per kept-alive request
(the ``-c`` handshakes spread over them): the keep-alive measure, e.g.
``-n 20000 -c 100``.
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import shutil
import subprocess
import sys
import time

import benchlib as B


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tree", action="append", default=[],
                   help="a kongacme source tree to count (repeatable; default: this checkout)")
    p.add_argument("-n", "--handshakes", type=int, default=600, help="handshakes counted per round (default 600)")
    p.add_argument("-c", "--concurrency", type=int, default=20, help="h2load connections at a time (default 20)")
    p.add_argument("--rounds", type=int, default=2, help="counted rounds per tree (default 2)")
    p.add_argument("--engine", default="", help="listen.engine (default: the config's default)")
    p.add_argument("--json", default="instructions.json")
    return p.parse_args(argv)


def _object_group(obj: str) -> str:
    base = os.path.basename(obj)
    if base.startswith("_rust.abi3"):
        return "OpenSSL (cryptography wheel)"
    if base.startswith(("python3", "libpython")):
        return "interpreter (python3.11)"
    if base.startswith("_cffi_backend"):
        return "cffi"
    if base.startswith(("libc.so", "libc-", "ld-linux")):
        return "libc"
    return "other: " + base


def read_dump(path: str) -> tuple[int, dict[str, int]]:
    """
    Total Ir and Ir per object group of one callgrind dump (self cost,
    summed per ``ob=``). Callgrind names an object once per process, in the
    first dump that mentions it, so the earlier dumps are read for names.
    """
    names: dict[str, str] = {}
    earlier = sorted((p for p in glob.glob(path.rsplit(".", 1)[0] + ".*") if _part(p) < _part(path)), key=_part)
    for dump in earlier:
        with open(dump, errors="replace") as f:
            for line in f:
                m = re.match(r"c?ob=\((\d+)\) (.+)", line)
                if m:
                    names[m.group(1)] = m.group(2).strip()
    total = 0
    groups: dict[str, int] = collections.Counter()
    current = "other"
    in_call = False
    with open(path, errors="replace") as f:
        for line in f:
            m = re.match(r"cob=\((\d+)\) (.+)", line)
            if m:
                names[m.group(1)] = m.group(2).strip()
                continue
            if line.startswith("summary:") or line.startswith("totals:"):
                total = max(total, int(line.split()[1]))
                continue
            m = re.match(r"ob=\((\d+)\)(?: (.*))?", line)
            if m:
                if m.group(2):
                    names[m.group(1)] = m.group(2).strip()
                current = _object_group(names.get(m.group(1), ""))
                continue
            if line.startswith("calls="):
                in_call = True  # the next cost line is inclusive cost of a call: not self
                continue
            if line[:1].isdigit() or line[:1] in "+-*":
                parts = line.split()
                if len(parts) >= 2:
                    if in_call:
                        in_call = False
                        continue
                    try:
                        groups[current] += int(parts[1])
                    except ValueError:
                        pass
                continue
            if line.startswith(("cfn=", "cfi=", "cfl=", "cob=")):
                continue
    return total, dict(groups)


def _part(path: str) -> int:
    return int(path.rsplit(".", 1)[1])


def _dump(pid: int, out: str) -> str:
    """Have callgrind write (and zero) its counters now; the new dump's path."""
    before = set(glob.glob(out + ".*"))
    subprocess.run(["callgrind_control", "-d", str(pid)], check=True, capture_output=True)
    for _ in range(600):
        new = set(glob.glob(out + ".*")) - before
        if new:
            path = new.pop()
            time.sleep(0.5)  # written whole
            return path
        time.sleep(0.1)
    raise RuntimeError("callgrind wrote no dump")


def main(argv=None) -> int:
    args = parse_args(argv)
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        B.log("valgrind is not installed (apt-get install valgrind)")
        return 2
    trees = [os.path.abspath(t) for t in (args.tree or [B.REPO])]
    work = B.out_dir("instructions")
    ca = B.load_or_create_ca(B.out_dir("ca"))
    host = "bench.test"
    leaf = B.issue_files(ca, work, "leaf", [host])
    results: dict = {"args": vars(args), "machine": B.machine_info(), "trees": {}}
    # -n == -c: one request per connection, each a full handshake; else kept alive.
    unit = "handshake" if args.handshakes <= args.concurrency else "request"
    results["unit"] = unit
    with B.Processes() as procs:
        up_port = B.free_port()
        B.start_haproxy(procs, "instr-upstream", B.haproxy_upstream_config(up_port), up_port, B.CLIENT_CPU)
        for index, tree in enumerate(trees):
            port = B.free_port()
            cfg_dir = os.path.join(work, "tree%d" % index)
            os.makedirs(cfg_dir, exist_ok=True)
            cfg = B.kongacme_config(
                cfg_dir, port, certificates=[{"cert": leaf["cert"], "key": leaf["key"]}],
                routes=[{"hosts": [host], "upstream": "127.0.0.1:%d" % up_port, "alpn": ["h2", "http/1.1"]}],
                fallback=leaf, engine=args.engine)
            for old in glob.glob(os.path.join(cfg_dir, "callgrind.out*")):
                os.unlink(old)
            out = os.path.join(cfg_dir, "callgrind.out")
            env = B.kongacme_env()
            env["PYTHONPATH"] = tree
            argv = ["valgrind", "--tool=callgrind", "--callgrind-out-file=" + out,
                    *B.kongacme_argv(cfg)]
            proc = procs.start("instr-kongacme%d" % index, argv, cpu=B.SERVER_CPU, cwd=tree, env=env)
            B.wait_port(port, proc, timeout=600)
            B.run_h2load(host, port, 300, args.concurrency, timeout=600)  # warm-up
            per_round = []
            for r in range(args.rounds):
                _dump(proc.pid, out)
                res = B.run_h2load(host, port, args.handshakes, args.concurrency, timeout=900)
                time.sleep(2.0)  # the last connections' ends
                total, groups = read_dump(_dump(proc.pid, out))
                ok = res["succeeded"]
                per_round.append({"handshakes": ok, "ir_per_handshake": total / ok,
                                  "groups": {k: v / ok for k, v in groups.items()}})
                B.log("%s round %d: %d %ss, %.0f instructions per %s" % (tree, r, ok, unit, total / ok, unit))
            procs.stop(proc)
            results["trees"][tree] = per_round
    first = None
    print("\ninstructions per %s (callgrind; median of rounds)" % unit)
    for tree, rounds in results["trees"].items():
        ir = B.median(r["ir_per_handshake"] for r in rounds)
        first = first or ir
        groups: dict[str, list[float]] = collections.defaultdict(list)
        for r in rounds:
            for k, v in r["groups"].items():
                groups[k].append(v)
        split = ", ".join("%s %.0f" % (k, B.median(v)) for k, v in sorted(groups.items(), key=lambda kv: -B.median(kv[1])))
        print("  %-40s %9.0f  (%.3f of the first)  %s" % (tree, ir, ir / first, split))
    path = B.save_json(args.json, results)
    print("raw results:", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
