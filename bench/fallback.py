#!/usr/bin/env python3
"""
The time from the primary CA failing to the certificate from the fallback
CA (issue 13, ``issuance.fallback_issuers``).

Everything runs on 127.0.0.1: two Pebbles (``PEBBLE_VA_NOSLEEP=1``, their
default 5% nonce rejection, each with its own roots; the client trusts
both) resolving every name to 127.0.0.1 through a DNS stub, and one daemon
at a time (``twistd -n kongacme``, ``first_handshake: wait``,
``cert_type: ecc``, ``storage: shm``, the secondary Pebble as
``fallback_issuers[0]``; each daemon's HTTP listener is both Pebbles'
``httpPort``, so the daemons run one after another). Conditions:

- ``healthy``: the primary answers (no fallback): the reference;
- ``stopped``: the primary's ``api_uri`` is a port nothing listens on
  (connection refused, as a stopped CA);
- ``503``: an HTTPS proxy (``tests/cafault.py``) in front of the real
  primary Pebble answers ``newOrder`` with 503 (the account and directory
  work);
- ``429``: the same proxy answers ``newOrder`` with 429 ``rateLimited``.

Each daemon gets a warm-up name first (account registrations, at the
primary and at the fallback), excluded. Then N new names each: the wall
time from connect to a completed TLS handshake that verified the chain and
the name (Python ``ssl``, blocking) — the first visitor waits for the whole
order, the primary's failure and the fallback's order included. From the
daemon's JSON log, per name: the time from the warning that the primary
failed (``... failed through the CA's fault ...: trying ...``) to the
``certificate ... issued`` line, i.e. from the primary CA failing to the
certificate from the fallback; and from the order's start to that warning
(how long the primary took to fail). The 1-minute load average is waited for
(< 0.8, at most ``--max-load-wait`` s) before each daemon's names.

Raw numbers: bench/out/fallback.json; logs: bench/out/fallback/.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import benchlib as B
import issuance as I

sys.path.insert(0, B.REPO)

TRYING = "failed through the CA's fault"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", "--names", type=int, default=15, help="new names per condition (default 15)")
    p.add_argument("--max-load-wait", type=float, default=300.0,
                   help="seconds to wait for a 1-minute load average below 0.8 (default 300)")
    p.add_argument("--json", default="fallback.json", help="result file under bench/out/")
    return p.parse_args(argv)


def start_pebble(procs: B.Processes, work: str, name: str, http_port: int, dns_port: int) -> I.Pebble:
    sub = os.path.join(work, name)
    os.makedirs(sub, exist_ok=True)
    pebble = I.Pebble(sub)
    pebble.start(procs, http_port, dns_port, None)
    return pebble


def start_proxy(procs: B.Processes, work: str, primary: I.Pebble, mode: str) -> str:
    port = B.free_port()
    proc = procs.start("fallback-proxy-" + mode, [sys.executable, "-m", "tests.cafault", str(port),
                                                  primary.directory_url, primary.ca_pem, primary.crt, primary.key,
                                                  mode, "new-order"],
                       log_path=os.path.join(work, "proxy-%s.log" % mode), cwd=B.REPO, env=B.kongacme_env())
    B.wait_port(port, proc, 30)
    return "https://127.0.0.1:%d/dir" % (port,)


def daemon(name: str, work: str, primary: I.Pebble, primary_url: str, secondary: I.Pebble,
           http_port: int) -> I.Daemon:
    import yaml

    d = I.Daemon("fallback-" + name, work, primary, http_port, handshake_wait=60, orders_per_minute=1000,
                 max_orders_in_flight=10)
    with open(d.config_path) as f:
        config = yaml.safe_load(f)
    config["acme"]["api_uri"] = primary_url
    config["issuance"]["request_timeout"] = 10
    config["issuance"]["fallback_issuers"] = [{"api_uri": secondary.directory_url, "ca_bundle": secondary.ca_pem}]
    with open(d.config_path, "w") as f:
        yaml.safe_dump(config, f, sort_keys=False)
    return d


def events(d: I.Daemon) -> list[tuple[float, str]]:
    """The daemon's JSON log lines (kongacme's format: ``time`` ISO 8601 UTC, ``message``) as (epoch, text)."""
    import datetime
    import json

    out = []
    with open(d.proc.bench_log, errors="replace") as f:
        for line in f:
            try:
                event = json.loads(line)
                when = datetime.datetime.fromisoformat(event["time"].replace("Z", "+00:00")).timestamp()
            except (ValueError, KeyError, TypeError, AttributeError):
                continue
            out.append((when, str(event.get("message", ""))))
    return out


def fallback_gaps(d: I.Daemon, names: list[str]) -> tuple[list[float], list[float]]:
    """
    Per name, in the daemon's clock: seconds from the order's start to the
    primary's failure line (detecting the failure), and from that line to
    the issued line (the fallback's order).
    """
    started: dict[str, float] = {}
    failed: dict[str, float] = {}
    detect, gaps = [], []
    for when, text in events(d):
        for name in names:
            if text.startswith("ordering a certificate for %s " % (name,)):
                started[name] = when
            elif "certificate order for %s at " % (name,) in text and TRYING in text:
                failed[name] = when
                if name in started:
                    detect.append(when - started.pop(name))
            elif text.startswith("certificate for %s issued" % (name,)) and name in failed:
                gaps.append(when - failed.pop(name))
    return detect, gaps


def main(argv=None) -> int:
    args = parse_args(argv)
    work = B.out_dir("fallback")
    results: dict = {"args": vars(args), "machine": B.machine_info(), "code": B.code_version(),
                     "started": time.strftime("%Y-%m-%d %H:%M:%S"), "conditions": {}}
    B.log("machine:", results["machine"]["cpu_model"], "load", results["machine"]["loadavg_at_start"])
    with B.Processes() as procs:
        dns_port = I.start_dns(procs, work)
        http_port = B.free_port()
        primary = start_pebble(procs, work, "primary", http_port, dns_port)
        secondary = start_pebble(procs, work, "secondary", http_port, dns_port)
        roots = os.path.join(work, "roots.pem")
        with open(roots, "w") as f:
            f.write(open(primary.root_pem).read() + open(secondary.root_pem).read())
        ctx = I.client_context(roots)
        conditions = {
            "healthy": lambda: primary.directory_url,
            "stopped": lambda: "https://127.0.0.1:%d/dir" % (B.free_port(),),
            "503": lambda: start_proxy(procs, work, primary, "503"),
            "429": lambda: start_proxy(procs, work, primary, "429"),
        }
        for index, (condition, primary_url) in enumerate(conditions.items()):
            d = daemon(condition, work, primary, primary_url(), secondary, http_port)
            d.start(procs, work)
            names = ["n%d.c%d.%s" % (i, index, I.DOMAIN) for i in range(args.names)]
            warm, err = I.verified_handshake(ctx, d.tls_port, "warm.c%d.%s" % (index, I.DOMAIN))
            B.log("%s warm-up: %s ms%s" % (condition, I.ms(warm), " " + err if err else ""))
            load = B.wait_for_quiet_machine(0.8, args.max_load_wait)
            samples, errors = [], []
            for name in names:
                seconds, err = I.verified_handshake(ctx, d.tls_port, name)
                (errors.append({"name": name, "error": err}) if err else samples.append(seconds))
            detect, gaps = fallback_gaps(d, names)
            results["conditions"][condition] = {
                "load_wait": load, "loadavg_at_end": B.loadavg(), "client": I.stats(samples),
                "order_start_to_primary_failed": I.stats(detect), "primary_failed_to_issued": I.stats(gaps),
                "errors": errors, "samples": samples, "gaps": gaps, "detect": detect,
                "fallbacks_logged": open(d.proc.bench_log, errors="replace").read().count(TRYING),
            }
            procs.stop(d.proc)
            c, t, g = I.stats(samples), I.stats(detect), I.stats(gaps)
            B.log("%-8s first visitor: n=%d median %s ms, p90 %s ms, max %s ms; order start -> primary failed: "
                  "median %s ms; primary failed -> issued: n=%d median %s ms; errors %d; load %s before" % (
                      condition, c["n"], I.ms(c.get("median")), I.ms(c.get("p90")), I.ms(c.get("max")),
                      I.ms(t.get("median")), g["n"], I.ms(g.get("median")), len(errors), load["loadavg"]))
    path = B.save_json(args.json, results)
    B.log("raw numbers: %s; logs: %s" % (path, work))
    return 0 if not any(c["errors"] for c in results["conditions"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
