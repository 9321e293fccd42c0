#!/usr/bin/env python3
"""
Run every benchmark in bench/ one after the other with its defaults (about
12 minutes on a 2-core machine; certificate sets are generated on the first
run only), printing each script's summary. Output of each script is also
saved as bench/out/<script>.log; the JSON results are in bench/out/.

Arguments after ``--`` are not supported: run a script directly to change
its options (each has --help).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
SCRIPTS = ["handshakes.py", "throughput.py", "cache_scale.py", "memory.py", "profile_handshake.py",
           "sslyze_check.py"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", help="comma-separated subset, e.g. handshakes,throughput")
    p.add_argument("--skip", default="", help="comma-separated scripts to skip")
    args = p.parse_args()
    wanted = SCRIPTS
    if args.only:
        names = {n.strip().removesuffix(".py") for n in args.only.split(",")}
        wanted = [s for s in SCRIPTS if s[:-3] in names]
    skip = {n.strip().removesuffix(".py") for n in args.skip.split(",") if n.strip()}
    wanted = [s for s in wanted if s[:-3] not in skip]
    os.makedirs(os.path.join(BENCH, "out"), exist_ok=True)
    failed = []
    for script in wanted:
        argv = [sys.executable, os.path.join(BENCH, script)]
        if script == "sslyze_check.py":
            argv.append("--also-haproxy")
        log_path = os.path.join(BENCH, "out", script[:-3] + ".log")
        print("=== %s (%s)" % (" ".join(argv[1:]), time.strftime("%H:%M:%S")), flush=True)
        t0 = time.monotonic()
        with open(log_path, "w") as log:
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for line in proc.stdout:  # type: ignore[union-attr]
                log.write(line)
                sys.stdout.write(line)
                sys.stdout.flush()
            rc = proc.wait()
        print("=== %s: exit %d after %.0fs\n" % (script, rc, time.monotonic() - t0), flush=True)
        if rc != 0:
            failed.append(script)
    if failed:
        print("failed or not compliant:", ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
