#!/usr/bin/env python3
"""
Cold start with many certificates in Redis (issue 4): how long a fresh
daemon takes until every stored certificate is servable, and its memory.

For each count N (default 0, 1,000 and 10,000) and each of --runs rounds
(interleaved, so drift on this shared machine hits every N alike):

1. a fresh ``redis-server`` is filled with N certificates under Kong's keys
   (``kong_acme:cert_key:<host>`` = ``{"key","cert"}`` JSON and
   ``kong_acme:renew_config:<host>``, kongacme.storage.keys encoders), with
   one pipelined raw connection. The ECDSA P-256 certificates come from
   kongacme.testing.TestCA, issued once into bench/out/cold-start/;
2. a ``twistd -n kongacme`` daemon (``acme.storage: redis``, on-demand
   issuance off, Kong's default ``scan_count`` 10, logging at the default
   ``info`` level) is started on core 0, and timed from process start to:
   its TLS port accepting, its log line "N certificate(s) loaded from
   storage", and the first verified TLS handshake (this CA as the only
   root) for the LAST name. Then 100 random names must verify too;
3. VmRSS of the daemon after the load and after those handshakes, and CPU
   seconds used up to the load line.

Per-certificate memory = (median RSS with N - median RSS with 0) / N.

``--profile`` then times, in a separate process against a Redis holding
the largest N, the pieces of ``CertificateManager.load_from_storage``:
SCAN (COUNT 10 as Kong, and 1000), N sequential GETs (what the manager
and the propagator's full sync do now), the same through
kongacme.storage.bulk.get_many (32 and 128 in flight), decoding every
value (kongacme.storage.keys.decode_cert_key) and putting it in a
CertificateCache.

Usage: python3 bench/cold_start.py [--counts 0,1000,10000] [--runs 3] [--profile]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import socket
import ssl
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as B  # noqa: E402

DOMAIN = "cold.test"
LOADED = re.compile(rb"(\d+) certificate\(s\) loaded from storage")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--counts", default="0,1000,10000", help="certificates in Redis per case (default 0,1000,10000)")
    p.add_argument("--runs", type=int, default=3, help="rounds over all counts; medians (default 3)")
    p.add_argument("--sample", type=int, default=100, help="random names handshaken after the load (default 100)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the load (default 600)")
    p.add_argument("--profile", action="store_true", help="also time the load's pieces in-process")
    p.add_argument("--json", default="cold_start.json", help="result file under bench/out/")
    p.add_argument("--profile-child", nargs=2, metavar=("PORT", "N"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def host(i: int) -> str:
    return "c%05d.%s" % (i, DOMAIN)


# -- certificates and Redis ------------------------------------------------------------


def certificates(n: int) -> tuple[str, list[tuple[bytes, bytes, bytes, bytes]]]:
    """
    ``(ca.pem path, [(cert_key name, value, renew_config name, value)])``
    for hosts 0..n-1, issued once into bench/out/cold-start/.
    """
    from kongacme.storage import keys

    directory = B.out_dir("cold-start")
    ca = B.load_or_create_ca(B.out_dir("ca"))
    path = os.path.join(directory, "certs.jsonl")
    entries: list[tuple[bytes, bytes, bytes, bytes]] = []
    if os.path.exists(path):
        with open(path, "rb") as f:
            for line in f:
                record = json.loads(line)
                entries.append(tuple(v.encode() for v in record))  # type: ignore[arg-type]
    if len(entries) < n:
        B.log("issuing %d ECDSA P-256 certificates (once) into %s" % (n - len(entries), path))
        started = time.perf_counter()
        with open(path, "ab") as f:
            for i in range(len(entries), n):
                certified = ca.issue([host(i)])
                record = (
                    keys.cert_key(host(i)).encode(),
                    keys.encode_cert_key(certified),
                    keys.renew_config(host(i)).encode(),
                    keys.encode_renew_config(host(i), certified.not_after.timestamp()),
                )
                entries.append(record)
                f.write(json.dumps([v.decode() for v in record]).encode() + b"\n")
        B.log("issued in %.1f s" % (time.perf_counter() - started))
    return os.path.join(B.out_dir("ca"), "ca.pem"), entries[:n]


def resp(*args: bytes) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        out.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(out)


def fill(port: int, entries, batch: int = 1000) -> float:
    """SET every entry over one pipelined connection; seconds taken."""
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as s, s.makefile("rb") as replies:
        for start in range(0, len(entries), batch):
            chunk = entries[start:start + batch]
            s.sendall(b"".join(resp(b"SET", k, v) + resp(b"SET", rk, rv) for k, v, rk, rv in chunk))
            for _ in range(2 * len(chunk)):
                line = replies.readline()
                if line != b"+OK\r\n":
                    raise RuntimeError("redis answered %r" % (line,))
    return time.perf_counter() - started


def start_redis(procs: B.Processes, work: str, tag: str) -> tuple[int, object]:
    port = B.free_port()
    proc = procs.start("cold-redis-" + tag, ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                                            "--appendonly", "no"], cpu=B.CLIENT_CPU,
                       log_path=os.path.join(work, "redis-%s.log" % tag))
    B.wait_port(port, proc, 30)
    return port, proc


# -- the daemon -----------------------------------------------------------------------


def write_config(work: str, tag: str, tls_port: int, redis_port: int) -> str:
    import yaml

    config = {
        "listen": {"tls": ["tcp:%d:interface=127.0.0.1:backlog=1024" % tls_port], "http": [], "admin": []},
        "state_dir": os.path.join(work, "state-" + tag),
        "routes": [],
        "default_upstream": None,
        "issuance": {"on_demand": False},
        "acme": {
            "account_email": "bench@example.com",
            # Never contacted: on-demand issuance is off and nothing is ordered.
            "api_uri": "https://127.0.0.1:9/directory",
            "tos_accepted": True,
            "domains": ["*." + DOMAIN],
            "cert_type": "ecc",
            "storage": "redis",
            "storage_config": {"redis": {"host": "127.0.0.1", "port": redis_port}},
        },
    }
    path = os.path.join(work, "kongacme-%s.yaml" % tag)
    with open(path, "w") as f:
        yaml.safe_dump(config, f, sort_keys=False)
    return path


def verified(context: ssl.SSLContext, port: int, name: str) -> str | None:
    """A handshake for ``name`` verified against the bench CA: None, or what failed."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname=name):
                return None
    except (OSError, ssl.SSLError) as e:
        return str(e)


def measure(procs: B.Processes, work: str, ca_pem: str, entries, run: int, sample: int, timeout: float) -> dict:
    n = len(entries)
    tag = "%d-%d" % (n, run)
    redis_port, redis = start_redis(procs, work, tag)
    fill_seconds = fill(redis_port, entries)
    tls_port = B.free_port()
    config = write_config(work, tag, tls_port, redis_port)
    log_path = os.path.join(work, "daemon-%s.log" % tag)
    context = ssl.create_default_context(cafile=ca_pem)
    t0 = time.perf_counter()
    proc = procs.start("cold-" + tag, B.kongacme_argv(config), cpu=B.SERVER_CPU, cwd=B.REPO, env=B.kongacme_env(),
                       log_path=log_path)
    result: dict = {"certs": n, "run": run, "fill_s": fill_seconds}
    listening = loaded = None
    while time.perf_counter() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError("daemon exited:\n" + B.tail(log_path))
        now = time.perf_counter()
        if listening is None:
            try:
                socket.create_connection(("127.0.0.1", tls_port), timeout=0.5).close()
                listening = now - t0
            except OSError:
                pass
        with open(log_path, "rb") as f:
            found = LOADED.search(f.read())
        if found:
            loaded = now - t0
            result["loaded_count"] = int(found.group(1))
            result["cpu_to_loaded_s"] = B.cpu_seconds(proc.pid)
            break
        time.sleep(0.01)
    if loaded is None:
        raise RuntimeError("no load line within %.0f s:\n%s" % (timeout, B.tail(log_path)))
    result["listening_s"] = listening
    result["loaded_s"] = loaded
    result["rss_loaded_kib"] = B.rss_kib(proc.pid)
    if n:
        last = host(n - 1)
        while True:
            error = verified(context, tls_port, last)
            if error is None:
                result["last_servable_s"] = time.perf_counter() - t0
                break
            if time.perf_counter() - t0 > timeout:
                raise RuntimeError("%s never verified: %s" % (last, error))
            time.sleep(0.01)
        names = [host(i) for i in random.Random(run).sample(range(n), min(sample, n))]
        failures = [(name, e) for name in names if (e := verified(context, tls_port, name)) is not None]
        result["sample"] = len(names)
        result["sample_failures"] = failures[:5]
        result["sample_failure_count"] = len(failures)
    result["rss_after_handshakes_kib"] = B.rss_kib(proc.pid)
    procs.stop(proc)
    procs.stop(redis)
    return result


# -- in-process profile of the load ---------------------------------------------------------


def profile_child(port: int, n: int) -> dict:
    """Time the pieces of load_from_storage against Redis on ``port`` (runs under the reactor)."""
    from twisted.internet import reactor, task
    from twisted.internet.defer import ensureDeferred

    from kongacme.storage import keys
    from kongacme.storage.bulk import get_many
    from kongacme.storage.redis import RedisStorage
    from kongacme.tls.cache import CertificateCache

    async def main() -> dict:
        out: dict = {"certs": n}
        storages = []

        def storage(**kw) -> RedisStorage:
            s = RedisStorage(reactor, port=port, **kw)
            storages.append(s)
            return s

        kong = storage()  # scan_count 10: Kong's default
        await kong.get("warm-up")
        t = time.perf_counter()
        names = await kong.list(keys.CERT_KEY_PREFIX)
        out["scan_count_10_s"] = time.perf_counter() - t
        t = time.perf_counter()
        names_1000 = await storage(scan_count=1000).list(keys.CERT_KEY_PREFIX)
        out["scan_count_1000_s"] = time.perf_counter() - t
        assert sorted(names) == sorted(names_1000) and len(names) == n, (len(names), n)
        t = time.perf_counter()
        values = []
        for name in names:
            values.append(await kong.get(name))
        out["sequential_get_s"] = time.perf_counter() - t
        for concurrency in (32, 128):
            t = time.perf_counter()
            found = await get_many(kong, names, concurrency=concurrency)
            out["get_many_%d_s" % concurrency] = time.perf_counter() - t
            assert list(found.values()) == values
        t = time.perf_counter()
        decoded = [keys.decode_cert_key(raw, name) for name, raw in zip(names, values)]
        out["decode_s"] = time.perf_counter() - t
        cache = CertificateCache(decoded[0])  # any certificate as the fallback
        t = time.perf_counter()
        for name, certified in zip(names, decoded):
            cache.put(certified, [name[len(keys.CERT_KEY_PREFIX):]])
        out["cache_put_s"] = time.perf_counter() - t
        for s in storages:
            await s.close()
        return out

    return task.react(lambda r: ensureDeferred(main()).addCallback(lambda out: print(json.dumps(out))))


def profile(procs: B.Processes, work: str, entries) -> dict:
    port, redis = start_redis(procs, work, "profile")
    fill(port, entries)
    res = subprocess.run([sys.executable, os.path.abspath(__file__), "--profile-child", str(port), str(len(entries))],
                         capture_output=True, cwd=B.REPO, env=B.kongacme_env(), timeout=1800)
    procs.stop(redis)
    if res.returncode != 0:
        raise RuntimeError(res.stderr.decode(errors="replace")[-3000:])
    return json.loads(res.stdout.decode().strip().splitlines()[-1])


# -- main -----------------------------------------------------------------------------------


def ms(seconds) -> str:
    return "%.0f" % (seconds * 1000) if seconds is not None else "-"


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.profile_child:
        profile_child(int(args.profile_child[0]), int(args.profile_child[1]))
        return 0
    counts = [int(c) for c in args.counts.split(",")]
    work = B.out_dir("cold-start")
    ca_pem, all_entries = certificates(max(counts))
    results = {"args": vars(args), "machine": B.machine_info(), "runs": [], "summary": []}
    with B.Processes() as procs:
        for run in range(1, args.runs + 1):
            for n in counts:
                r = measure(procs, work, ca_pem, all_entries[:n], run, args.sample, args.timeout)
                results["runs"].append(r)
                B.log("N=%d run %d: listening %s ms, loaded %s ms, last name servable %s ms, RSS %d KiB, "
                      "sample failures %d" % (n, run, ms(r["listening_s"]), ms(r["loaded_s"]),
                                              ms(r.get("last_servable_s")), r["rss_loaded_kib"],
                                              r.get("sample_failure_count", 0)))
        if args.profile:
            results["profile"] = profile(procs, work, all_entries)
    base_rss = statistics.median(r["rss_loaded_kib"] for r in results["runs"] if r["certs"] == counts[0])
    print()
    print("| certificates | TLS port open | all loaded (log line) | last name verifies | CPU s to loaded | "
          "RSS after load | RSS after %d handshakes | per certificate |" % args.sample)
    print("|---|---|---|---|---|---|---|---|")
    for n in counts:
        rows = [r for r in results["runs"] if r["certs"] == n]

        def med(field):
            values = [r[field] for r in rows if r.get(field) is not None]
            return statistics.median(values) if values else None

        rss, rss_hs = med("rss_loaded_kib"), med("rss_after_handshakes_kib")
        per_cert = (rss - base_rss) * 1024 / n if n and counts[0] == 0 else None
        summary = {"certs": n, "listening_s": med("listening_s"), "loaded_s": med("loaded_s"),
                   "last_servable_s": med("last_servable_s"), "cpu_to_loaded_s": med("cpu_to_loaded_s"),
                   "rss_loaded_kib": rss, "rss_after_handshakes_kib": rss_hs, "bytes_per_cert": per_cert,
                   "sample_failures": sum(r.get("sample_failure_count", 0) for r in rows)}
        results["summary"].append(summary)
        print("| %d | %s ms | %s ms | %s ms | %.2f | %.1f MiB | %.1f MiB | %s |" % (
            n, ms(summary["listening_s"]), ms(summary["loaded_s"]), ms(summary["last_servable_s"]),
            summary["cpu_to_loaded_s"], rss / 1024, rss_hs / 1024,
            "%.0f B" % per_cert if per_cert is not None else "-"))
    if "profile" in results:
        p = results["profile"]
        print()
        print("load_from_storage's pieces, %d certificates, in-process:" % p["certs"])
        print("| step | time |")
        print("|---|---|")
        for key, label in (("scan_count_10_s", "list: SCAN COUNT 10 (Kong's default scan_count)"),
                           ("scan_count_1000_s", "list: SCAN COUNT 1000"),
                           ("sequential_get_s", "GET one after another (manager and full sync today)"),
                           ("get_many_32_s", "storage.bulk.get_many, 32 in flight"),
                           ("get_many_128_s", "storage.bulk.get_many, 128 in flight"),
                           ("decode_s", "keys.decode_cert_key for every value"),
                           ("cache_put_s", "CertificateCache.put for every certificate")):
            print("| %s | %s ms |" % (label, ms(p[key])))
    path = B.save_json(args.json, results)
    B.log("wrote", path)
    return 0 if all(s["sample_failures"] == 0 for s in results["summary"]) else 1


if __name__ == "__main__":
    sys.exit(main())
