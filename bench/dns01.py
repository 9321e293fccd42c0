#!/usr/bin/env python3
"""
First visitor to verified handshake with a new certificate (issue 13):
dns-01 through RFC 2136 updates to a real BIND 9 and tls-alpn-01 on the
daemon's TLS port, next to http-01, in one run against one Pebble.

Everything runs on 127.0.0.1: BIND 9 (``named -g``, zone ``bench.test``
with a ``*`` A record to 127.0.0.1 and a TSIG key allowed to update it),
Pebble (``PEBBLE_VA_NOSLEEP=1``, resolving every name at that BIND with
``-dnsserver``, its default 5% nonce rejection) and four daemons
(``twistd -n kongacme``, ``first_handshake: wait``, ``cert_type: ecc``,
``storage: shm``):

- ``http-01``: ``domains: ["*.h.bench.test"]``, challenge_types default;
  its HTTP listener is Pebble's ``httpPort``;
- ``tls-alpn-01``: ``domains: ["*.t.bench.test"]``,
  ``challenge_types: [tls-alpn-01]``, ``listen.http: []``; its TLS
  listener is Pebble's ``tlsPort``;
- ``dns-01``: ``domains: ["*.d.bench.test"]``,
  ``challenge_types: [dns-01]``, ``issuance.dns01`` pointed at BIND;
- ``wildcard``: as dns-01 with ``wildcard: true`` and ``domains``
  ``*.w0.bench.test`` … (one per name): the first visitor of
  ``a.wI.bench.test`` gets a ``*.wI.bench.test`` certificate (one
  authorization; no base name).

Each daemon gets a warm-up name first (account registration), excluded.
Then N rounds; in each, one new name per daemon, in turn (so drift in the
machine's load hits all alike): the wall time from connect to a
completed TLS handshake that verified the chain against Pebble's root and
the name (Python ``ssl``, blocking). The 1-minute load average is waited
for (< 0.8, at most ``--max-load-wait`` s) before the rounds.

Raw numbers: bench/out/dns01.json; logs: bench/out/dns01/.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import sys
import time

import benchlib as B
import issuance as I

sys.path.insert(0, B.REPO)
from tests.bind import KEY_NAME, BindFixture  # noqa: E402

ZONE = "bench.test"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", "--names", type=int, default=30, help="new names per challenge type (default 30)")
    p.add_argument("--max-load-wait", type=float, default=300.0,
                   help="seconds to wait for a 1-minute load average below 0.8 (default 300)")
    p.add_argument("--json", default="dns01.json", help="result file under bench/out/")
    return p.parse_args(argv)


def start_bind(procs: B.Processes, work: str) -> tuple[int, str]:
    directory = os.path.join(work, "bind")
    shutil.rmtree(directory, ignore_errors=True)
    os.makedirs(directory)
    port = B.free_port()
    secret = base64.b64encode(os.urandom(32)).decode()
    BindFixture.write_files(directory, ZONE, port, secret)
    named = shutil.which("named") or "/usr/sbin/named"
    argv = [named, "-g", "-c", os.path.join(directory, "named.conf")] + (["-u", "root"] if os.getuid() == 0 else [])
    proc = procs.start("dns01-named", argv, log_path=os.path.join(work, "named.log"), cwd=directory)
    deadline = time.monotonic() + 30
    while b"zone %s/IN: loaded serial" % (ZONE.encode(),) not in open(proc.bench_log, "rb").read():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("named did not start:\n" + B.tail(proc.bench_log))
        time.sleep(0.05)
    return port, secret


class TlsOnlyDaemon(I.Daemon):
    """A daemon with no plain-HTTP listener (``listen.http: []``)."""

    def start(self, procs: B.Processes, work: str) -> None:
        self.proc = procs.start(self.name, B.kongacme_argv(self.config_path), cwd=B.REPO, env=B.kongacme_env(),
                                log_path=os.path.join(work, self.name + ".log"))
        B.wait_port(self.tls_port, self.proc, 120)
        B.wait_port(self.admin_port, self.proc, 30)


def daemon(name: str, work: str, pebble, http_port: int, domains: list[str], issuance: dict,
           tls_port: int | None = None) -> I.Daemon:
    """
    :param tls_port: the TLS listener's port (Pebble's ``tlsPort``), and
        no plain-HTTP listener; default a free port and an HTTP listener on
        ``http_port``.
    """
    import yaml

    kind = I.Daemon if tls_port is None else TlsOnlyDaemon
    d = kind("dns01-" + name, work, pebble, http_port, handshake_wait=30, orders_per_minute=1000,
             max_orders_in_flight=10)
    with open(d.config_path) as f:
        config = yaml.safe_load(f)
    if tls_port is not None:
        d.tls_port = tls_port
        config["listen"]["tls"] = ["tcp:%d:interface=127.0.0.1:backlog=1024" % tls_port]
        config["listen"]["http"] = []
    config["acme"]["domains"] = domains
    config["issuance"].update(issuance)
    d.issuance = config["issuance"]
    with open(d.config_path, "w") as f:
        yaml.safe_dump(config, f, sort_keys=False)
    return d


def pebble_tls_port(work: str) -> int:
    """The ``tlsPort`` Pebble validates tls-alpn-01 on (from its config file)."""
    with open(os.path.join(work, "pebble.json")) as f:
        return json.load(f)["pebble"]["tlsPort"]


def main(argv=None) -> int:
    args = parse_args(argv)
    work = B.out_dir("dns01")
    results: dict = {"args": vars(args), "machine": B.machine_info(), "code": B.code_version(),
                     "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    B.log("machine:", results["machine"]["cpu_model"], "load", results["machine"]["loadavg_at_start"])
    n = args.names
    with B.Processes() as procs:
        dns_port, secret = start_bind(procs, work)
        http_port = B.free_port()
        pebble = I.Pebble(work)
        pebble.start(procs, http_port, dns_port, None)
        dns01 = {"server": "127.0.0.1:%d" % (dns_port,), "tsig_key_name": KEY_NAME, "tsig_secret": secret,
                 "propagation_timeout": 10, "ttl": 5}
        kinds = {
            "http-01": (daemon("http01", work, pebble, http_port, ["*.h." + ZONE], {}),
                        lambda i: "n%d.h.%s" % (i, ZONE)),
            "tls-alpn-01": (daemon("tlsalpn01", work, pebble, B.free_port(), ["*.t." + ZONE],
                                   {"challenge_types": ["tls-alpn-01"]}, tls_port=pebble_tls_port(work)),
                            lambda i: "n%d.t.%s" % (i, ZONE)),
            "dns-01": (daemon("dns01", work, pebble, B.free_port(), ["*.d." + ZONE],
                              {"challenge_types": ["dns-01"], "dns01": dns01}),
                       lambda i: "n%d.d.%s" % (i, ZONE)),
            "wildcard": (daemon("wildcard", work, pebble, B.free_port(),
                                ["*.w%d.%s" % (i, ZONE) for i in range(n + 1)],
                                {"challenge_types": ["dns-01"], "dns01": dns01, "wildcard": True}),
                         lambda i: "a.w%d.%s" % (i, ZONE)),
        }
        ctx = I.client_context(pebble.root_pem)
        samples: dict[str, list[float]] = {k: [] for k in kinds}
        errors: dict[str, list] = {k: [] for k in kinds}
        for kind, (d, name_of) in kinds.items():
            d.start(procs, work)
            warm, err = I.verified_handshake(ctx, d.tls_port, name_of(n))
            B.log("%s warm-up: %s ms%s" % (kind, I.ms(warm), " " + err if err else ""))
        results["load_wait"] = B.wait_for_quiet_machine(0.8, args.max_load_wait)
        B.log("load before the rounds:", results["load_wait"])
        for i in range(n):
            for kind, (d, name_of) in kinds.items():
                seconds, err = I.verified_handshake(ctx, d.tls_port, name_of(i))
                (errors[kind].append({"i": i, "error": err}) if err else samples[kind].append(seconds))
        results["loadavg_at_end"] = B.loadavg()
        # Counted in the raw JSON lines (one "ordering a certificate" per order, warm-up included).
        results["orders_logged"] = {k: open(d.proc.bench_log, errors="replace").read().count("ordering a certificate")
                                    for k, (d, _) in kinds.items()}
        results["pebble_orders_created"] = I.pebble_counts(pebble.log_text(), ())["orders_created"]
    results["client"] = {k: I.stats(v) for k, v in samples.items()}
    results["errors"] = errors
    results["samples"] = samples
    path = B.save_json(args.json, results)
    for kind in kinds:
        c = results["client"][kind]
        B.log("%-11s first visitor: n=%d median %s ms, p90 %s ms, max %s ms; errors %d" % (
            kind, c["n"], I.ms(c.get("median")), I.ms(c.get("p90")), I.ms(c.get("max")), len(errors[kind])))
    B.log("orders: %s in the daemons' logs (warm-ups included), %d created at Pebble" % (
        results["orders_logged"], results["pebble_orders_created"]))
    B.log("load: %s before, %.2f after; raw numbers: %s; logs: %s" % (
        results["load_wait"]["loadavg"], results["loadavg_at_end"], path, work))
    return 0 if not any(errors.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
