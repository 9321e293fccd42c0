#!/usr/bin/env python3
"""
Issue 11, "Memory, round 2": do workers forked from a lean zygote share
more than workers exec'd from the lean entry point?

exec
    N processes ``python bench/worker_fork.py --child``, each importing what
    a worker imports (``kongacme.workers.worker``: Twisted, pyOpenSSL,
    cryptography, the TLS and proxy code), as ``python -m
    kongacme.workers.worker`` does today.
fork
    one zygote exec'd the same way imports the same modules, runs
    ``gc.collect(); gc.freeze()`` (so the collector never writes to the
    imported objects' headers again) and forks N children.

In every child, as in a worker after its start: the reactor is installed,
a ``WorkerCertificateCache`` and a ``ContextBuilder`` created, the child
says it is ready and waits (idle, the reactor not running). Then, on the
bench's signal, each child takes --names certificates (a P-256 leaf and one
intermediate, the way a worker decodes the master's answer) into its cache
and makes one connection for each (what the first handshake for a name
leaves behind), and waits again.

PSS, USS (Private_Clean + Private_Dirty) and RSS from /proc/<pid>/smaps_rollup
of every process, idle and with the names in use, for N = --small and
--large workers; the cost of an extra worker = (total PSS with --large −
total with --small) / (--large − --small), which counts the zygote once.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as B  # noqa: E402

HERE = os.path.abspath(__file__)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--names", type=int, default=1000, help="certificates each worker takes (default 1000)")
    p.add_argument("--small", type=int, default=2, help="workers in the smaller run (default 2)")
    p.add_argument("--large", type=int, default=4, help="workers in the larger run (default 4)")
    p.add_argument("--repeat", type=int, default=2, help="runs per mode and size (default 2)")
    p.add_argument("--json", default="worker-fork.json", help="result file under bench/out/")
    p.add_argument("--modes", default="exec,fork", help="exec, fork or both (default)")
    p.add_argument("--tree", default=None,
                   help="directory holding the kongacme package the workers run (default: this checkout; "
                        "e.g. an export of an older commit, to compare in one run)")
    p.add_argument("--max-load", type=float, default=0.8, help="wait for a 1-minute load below this (default 0.8)")
    p.add_argument("--max-load-wait", type=float, default=120.0,
                   help="wait at most this many s for it before each run, then measure anyway (default 120)")
    p.add_argument("--child", nargs=3, metavar=("MODE", "N", "DIR"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


# -- children ---------------------------------------------------------------------------------


def lean_imports() -> None:
    """What ``python -m kongacme.workers.worker`` imports before main() runs."""
    import kongacme.workers.worker  # noqa: F401


def worker_life(directory: str, entries_path: str) -> None:
    """A worker after its start: reactor, cache, builder; idle; then --names in use; idle."""
    from twisted.internet import reactor

    from kongacme.tls.context import ContextBuilder
    from kongacme.workers import channel
    from kongacme.workers.certcache import WorkerCertificateCache

    with open(os.path.join(directory, "fallback.json")) as f:
        _, fallback = channel.decode_certificate(json.load(f))  # as SetFallback does
    cache = WorkerCertificateCache(fallback, 10_000)
    builder = ContextBuilder(reactor)
    builder.connection_for(fallback)
    ready(directory, "idle")
    wait_for(os.path.join(directory, "fill"))
    with open(entries_path) as f:
        entries = json.load(f)
    cache.answer(entries, [])
    del entries
    for name in cache.names():
        builder.connection_for(cache.lookup(name))
    gc.collect()
    ready(directory, "filled")
    wait_for(os.path.join(directory, "stop"))


def ready(directory: str, what: str) -> None:
    with open(os.path.join(directory, "%s-%d" % (what, os.getpid())), "w"):
        pass


def wait_for(path: str) -> None:
    while not os.path.exists(path):
        time.sleep(0.05)


def child(mode: str, n: int, directory: str) -> None:
    entries_path = os.path.join(directory, "entries.json")
    lean_imports()
    if mode == "exec":
        worker_life(directory, entries_path)
        return
    gc.collect()
    gc.freeze()
    children = []
    for _ in range(n):
        pid = os.fork()
        if pid == 0:
            try:
                worker_life(directory, entries_path)
            finally:
                os._exit(0)
        children.append(pid)
    ready(directory, "zygote")
    for pid in children:
        os.waitpid(pid, 0)


# -- the bench ---------------------------------------------------------------------------------


def entries(n: int) -> list:
    """n FetchCertificates entries (a P-256 leaf and one intermediate each), as bench/tls_memory.py issues them."""
    import tls_memory

    with open(tls_memory.entries(n)) as f:
        return json.load(f)


def pids_in(directory: str, what: str) -> list[int]:
    return sorted(int(f.split("-")[1]) for f in os.listdir(directory) if f.startswith(what + "-"))


def wait_pids(directory: str, what: str, count: int, timeout: float = 120) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = pids_in(directory, what)
        if len(found) >= count:
            return found
        time.sleep(0.05)
    raise RuntimeError("%d %s processes after %d s" % (len(pids_in(directory, what)), what, timeout))


def memory(pids: list[int]) -> list[dict]:
    out = []
    for pid in pids:
        m = B.memory_kib(pid)
        out.append({"pid": pid, "Rss": m.get("Rss", 0), "Pss": m.get("Pss", 0),
                    "Uss": m.get("Private_Clean", 0) + m.get("Private_Dirty", 0)})
    return out


def one_run(mode: str, n: int, names: list, env: dict) -> dict:
    import shutil
    import tempfile

    directory = tempfile.mkdtemp(prefix="worker-fork-")
    try:
        with open(os.path.join(directory, "entries.json"), "w") as f:
            json.dump(names[1:], f)
        with open(os.path.join(directory, "fallback.json"), "w") as f:
            json.dump(names[0], f)
        procs = []
        if mode == "exec":
            for _ in range(n):
                procs.append(subprocess.Popen([sys.executable, HERE, "--child", mode, str(n), directory], env=env,
                                              cwd=B.REPO))
        else:
            procs.append(subprocess.Popen([sys.executable, HERE, "--child", mode, str(n), directory], env=env,
                                          cwd=B.REPO))
        try:
            workers = wait_pids(directory, "idle", n)
            extra = [procs[0].pid] if mode == "fork" else []
            if mode == "fork":
                wait_pids(directory, "zygote", 1)
            time.sleep(1.0)
            idle = {"workers": memory(workers), "zygote": memory(extra)}
            open(os.path.join(directory, "fill"), "w").close()
            wait_pids(directory, "filled", n)
            time.sleep(1.0)
            filled = {"workers": memory(workers), "zygote": memory(extra)}
            open(os.path.join(directory, "stop"), "w").close()
            for proc in procs:
                proc.wait(timeout=60)
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    finally:
        shutil.rmtree(directory, ignore_errors=True)

    def total(state: dict, key: str) -> int:
        return sum(m[key] for m in state["workers"] + state["zygote"])

    run = {"mode": mode, "workers": n, "idle": idle, "filled": filled}
    for state in ("idle", "filled"):
        run[state + "_total_pss_kib"] = total(run[state], "Pss")
        run[state + "_worker_pss_kib"] = [m["Pss"] for m in run[state]["workers"]]
        run[state + "_worker_uss_kib"] = [m["Uss"] for m in run[state]["workers"]]
    return run


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        child(args.child[0], int(args.child[1]), args.child[2])
        return 0
    names = entries(args.names + 1)
    env = B.kongacme_env()
    if args.tree:
        env["PYTHONPATH"] = os.path.abspath(args.tree)
    modes = [m for m in args.modes.split(",") if m]
    results: dict = {"args": vars(args), "machine": B.machine_info(), "runs": []}
    for rep in range(args.repeat):
        for mode in modes if rep % 2 == 0 else modes[::-1]:
            for n in (args.small, args.large):
                load = B.wait_for_quiet_machine(args.max_load, args.max_load_wait)
                run = one_run(mode, n, names, env)
                run["load"] = load
                results["runs"].append(run)
                B.log("%s x%d: idle total PSS %.1f MiB (workers PSS %s, USS %s); with %d names %.1f MiB "
                      "(workers PSS %s, USS %s)" % (
                          mode, n, run["idle_total_pss_kib"] / 1024,
                          [round(k / 1024, 1) for k in run["idle_worker_pss_kib"]],
                          [round(k / 1024, 1) for k in run["idle_worker_uss_kib"]], args.names,
                          run["filled_total_pss_kib"] / 1024,
                          [round(k / 1024, 1) for k in run["filled_worker_pss_kib"]],
                          [round(k / 1024, 1) for k in run["filled_worker_uss_kib"]]))
    summary = {}
    for mode in modes:
        for state in ("idle", "filled"):
            small = [r[state + "_total_pss_kib"] for r in results["runs"] if r["mode"] == mode
                     and r["workers"] == args.small]
            large = [r[state + "_total_pss_kib"] for r in results["runs"] if r["mode"] == mode
                     and r["workers"] == args.large]
            summary["%s_%s_extra_worker_pss_mib" % (mode, state)] = (
                (B.median(large) - B.median(small)) / (args.large - args.small) / 1024)
            summary["%s_%s_total_pss_mib_%d" % (mode, state, args.large)] = B.median(large) / 1024
    results["summary"] = summary
    saved = B.save_json(args.json, results)
    print()
    print("PSS added by each extra worker, MiB (total PSS with %d − with %d, / %d; zygote counted once):" % (
        args.large, args.small, args.large - args.small))
    for mode in modes:
        print("  %-5s idle %6.1f   with %d names in use %6.1f   (total with %d workers: %.1f / %.1f)" % (
            mode, summary["%s_idle_extra_worker_pss_mib" % mode], args.names,
            summary["%s_filled_extra_worker_pss_mib" % mode], args.large,
            summary["%s_idle_total_pss_mib_%d" % (mode, args.large)],
            summary["%s_filled_total_pss_mib_%d" % (mode, args.large)]))
    print("raw results:", saved)
    return 0


if __name__ == "__main__":
    sys.exit(main())
