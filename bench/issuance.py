#!/usr/bin/env python3
"""
Issuance latency and burst (issue 3): kongacme's on-demand ACME issuance
against a local Pebble, side by side with certbot's ``acme.client.ClientV2``
doing the same issuances against the same Pebble.

Everything runs on 127.0.0.1: Pebble (``PEBBLE_VA_NOSLEEP=1``, its default
5% nonce rejection and 50% authorization reuse), a DNS stub answering every
A query with 127.0.0.1 (twisted.names, in a child process), and the daemon
(``twistd -n kongacme``: ``first_handshake: wait``, ``cert_type: ecc``,
``storage: shm``, ``domains: ["*.bench.test"]``, ``ca_bundle`` = Pebble's
listener CA, HTTP listener = Pebble's ``httpPort`` = ``challenge_port``).

Phases, in one run:

1. first visitor: N new names one after another; for each, the wall time
   from connect (the ClientHello follows at once) to a completed TLS
   handshake that verified the chain against Pebble's root (/roots/0) and
   the name (Python ``ssl``, blocking, in this process). One warm-up name
   first (the daemon registers its account on its first order), excluded.
2. baseline: ``acme.client.ClientV2`` (synchronous, requests), account
   registered beforehand and one warm-up issuance, both excluded; then N
   names, each timed from P-256 key + CSR generation through new_order,
   answer_challenge and poll_and_finalize. http-01 is answered by a tiny
   HTTP server on Pebble's httpPort (the daemon is stopped by then, so the
   port is free). Its own ``time.sleep`` calls are counted separately.
3. burst: a fresh daemon with ``max_orders_in_flight`` and
   ``orders_per_minute`` raised above the burst size and ``handshake_wait``
   raised to 55 s; one warm-up name; then B clients (threads) connect at
   once, each with its own new name; a client that does not get a verified
   handshake retries until the phase deadline. Reported: all issued?, total
   time, per-client latency, daemon VmHWM/VmRSS, orders per name (daemon
   log and Pebble log). Then 20 clients at once for ONE new name: exactly
   one order expected.

If Pebble stops answering during the burst (Pebble 2.4 can deadlock under
many concurrent orders from one account, see bench/RESULTS.md), a watchdog
notices (its log silent for 20 s), sends it SIGQUIT so the Go runtime dumps
every goroutine into bench/out/issuance/pebble.log, and the burst is
reported as failed.

``--trace`` runs the daemons with debug logging and prints the median
timeline of one sequential order (every ACME request, poll and challenge
fetch, in ms after the client's connect); ``--profile`` runs py-spy on the
daemon and says where its CPU time goes.

Raw numbers: bench/out/issuance.json; logs: bench/out/issuance/ (the
daemon logs JSON lines, ``*.txt`` next to them are the same as text with
milliseconds).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime
import http.server
import json
import os
import re
import socket
import ssl
import statistics
import subprocess
import sys
import threading
import time

import benchlib as B

HERE = os.path.abspath(__file__)
DOMAIN = "bench.test"
PEBBLE = "/usr/bin/pebble"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", "--names", type=int, default=50,
                   help="new names for the first-visitor phase (default 50)")
    p.add_argument("--baseline-names", type=int, default=None,
                   help="names for the ClientV2 baseline (default: same as -n)")
    p.add_argument("--burst", type=int, default=200, help="clients (= new names) at once in the burst (default 200)")
    p.add_argument("--same-name", type=int, default=20,
                   help="clients at once for ONE new name after the burst (default 20)")
    p.add_argument("--budget", type=float, default=280.0,
                   help="seconds for the whole run; phases stop early past it (default 280)")
    p.add_argument("--skip", action="append", default=[], choices=("latency", "baseline", "burst"),
                   help="leave a phase out (repeatable)")
    p.add_argument("--profile", action="store_true",
                   help="py-spy record the daemon during the first-visitor and burst phases "
                        "(bench/out/issuance/{latency,burst}-pyspy.txt, raw collapsed stacks) and print where "
                        "its CPU time goes")
    p.add_argument("--trace", action="store_true",
                   help="run the daemons with debug logging; print the median timeline of one sequential "
                        "order (every ACME request, poll and challenge fetch, in ms after the connect) and the "
                        "burst's CA requests and poll waits")
    p.add_argument("--nonce-reject", type=int, default=None,
                   help="PEBBLE_WFE_NONCEREJECT (default: unset = Pebble's 5%%)")
    p.add_argument("--json", default="issuance.json", help="result file under bench/out/")
    p.add_argument("--dns-stub", metavar="PORTFILE", help=argparse.SUPPRESS)
    return p.parse_args(argv)


# -- DNS stub (child process) --------------------------------------------------------


def run_dns_stub(port_file: str) -> None:
    """Every A query -> 127.0.0.1, anything else -> empty NOERROR; UDP+TCP, same port."""
    from twisted.internet import reactor
    from twisted.internet.defer import succeed
    from twisted.internet.error import CannotListenError
    from twisted.names import common, dns, server

    class Loopback(common.ResolverBase):
        def _lookup(self, name, cls, type, timeout):
            if type == dns.A:
                rr = dns.RRHeader(name=name, type=dns.A, cls=dns.IN, ttl=60, auth=True,
                                  payload=dns.Record_A("127.0.0.1", ttl=60))
                return succeed(([rr], [], []))
            return succeed(([], [], []))

        def query(self, query, timeout=None):
            return self._lookup(query.name.name, query.cls, query.type, timeout)

    factory = server.DNSServerFactory(authorities=[Loopback()])
    for _ in range(50):
        udp = reactor.listenUDP(0, dns.DNSDatagramProtocol(controller=factory), interface="127.0.0.1")
        port = udp.getHost().port
        try:
            reactor.listenTCP(port, factory, interface="127.0.0.1")
        except CannotListenError:
            udp.stopListening()
            continue
        break
    else:
        raise SystemExit("no free port for the DNS stub")
    with open(port_file + ".tmp", "w") as f:
        f.write(str(port))
    os.rename(port_file + ".tmp", port_file)
    reactor.run()


def start_dns(procs: B.Processes, work: str) -> int:
    port_file = os.path.join(work, "dns.port")
    with contextlib.suppress(FileNotFoundError):
        os.remove(port_file)
    proc = procs.start("issuance-dns", [sys.executable, HERE, "--dns-stub", port_file],
                       log_path=os.path.join(work, "dns.log"), env=B.kongacme_env())
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("DNS stub exited:\n" + B.tail(proc.bench_log))
        if os.path.exists(port_file):
            return int(open(port_file).read())
        time.sleep(0.05)
    raise RuntimeError("DNS stub did not start")


# -- Pebble -----------------------------------------------------------------------------


class Pebble:
    def __init__(self, work: str):
        self.work = work
        self.ca_pem = os.path.join(work, "pebble-listener-ca.pem")
        self.root_pem = os.path.join(work, "pebble-root.pem")
        self.proc = None
        self.directory_url = self.management_url = ""

    def write_certificates(self) -> None:
        """A throwaway CA and a listener leaf (localhost, 127.0.0.1) for Pebble's HTTPS."""
        from kongacme.testing import TestCA

        ca = TestCA.create("kongacme bench Pebble listener CA")
        listener = ca.issue(["localhost"], ips=["127.0.0.1"], days=7, include_ca=True)
        ca.write_ca(self.ca_pem)
        self.crt = os.path.join(self.work, "pebble-listener.crt")
        self.key = os.path.join(self.work, "pebble-listener.key")
        with open(self.crt, "wb") as f:
            f.write(listener.chain_pem())
        with open(self.key, "wb") as f:
            f.write(listener.key_pem())

    def start(self, procs: B.Processes, http_port: int, dns_port: int, nonce_reject: int | None) -> None:
        import requests

        self.write_certificates()
        acme_port, mgmt_port = B.free_port(), B.free_port()
        config = {"pebble": {
            "listenAddress": "127.0.0.1:%d" % acme_port,
            "managementListenAddress": "127.0.0.1:%d" % mgmt_port,
            "certificate": self.crt,
            "privateKey": self.key,
            "httpPort": http_port,
            "tlsPort": B.free_port(),
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
        }}
        path = os.path.join(self.work, "pebble.json")
        with open(path, "w") as f:
            json.dump(config, f, indent=2)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PEBBLE_VA_NOSLEEP": "1"}
        if nonce_reject is not None:
            env["PEBBLE_WFE_NONCEREJECT"] = str(nonce_reject)
        self.env = env
        self.proc = procs.start("issuance-pebble", [PEBBLE, "-config", path, "-dnsserver", "127.0.0.1:%d" % dns_port,
                                                    "-strict=false"],
                                log_path=os.path.join(self.work, "pebble.log"), env=env, cwd=self.work)
        self.directory_url = "https://127.0.0.1:%d/dir" % acme_port
        self.management_url = "https://127.0.0.1:%d" % mgmt_port
        B.wait_port(acme_port, self.proc, 30)
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(self.directory_url, verify=self.ca_pem, timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("Pebble's directory does not answer:\n" + B.tail(self.proc.bench_log))
            time.sleep(0.05)
        root = requests.get(self.management_url + "/roots/0", verify=self.ca_pem, timeout=10)
        root.raise_for_status()
        with open(self.root_pem, "w") as f:
            f.write(root.text)

    def log_text(self, start: int = 0, end: int | None = None) -> str:
        with open(self.proc.bench_log, "rb") as f:
            f.seek(start)
            data = f.read() if end is None else f.read(max(0, end - start))
        return data.decode(errors="replace")

    def log_offset(self) -> int:
        return os.path.getsize(self.proc.bench_log)


# -- the daemon ----------------------------------------------------------------------------


class Daemon:
    def __init__(self, name: str, work: str, pebble: Pebble, http_port: int, *, handshake_wait: float,
                 orders_per_minute: int, max_orders_in_flight: int, log_level: str = "info"):
        import yaml

        self.name = name
        self.tls_port, self.admin_port, self.http_port = B.free_port(), B.free_port(), http_port
        self.issuance = {
            "on_demand": True,
            "first_handshake": "wait",
            "handshake_wait": handshake_wait,
            "orders_per_minute": orders_per_minute,
            "max_orders_in_flight": max_orders_in_flight,
            "ca_bundle": pebble.ca_pem,
            "request_timeout": 30,
            "challenge_port": http_port,
        }
        config = {
            "listen": {
                "tls": ["tcp:%d:interface=127.0.0.1:backlog=1024" % self.tls_port],
                "http": ["tcp:%d:interface=127.0.0.1:backlog=1024" % http_port],
                "admin": ["tcp:%d:interface=127.0.0.1" % self.admin_port],
            },
            "state_dir": os.path.join(work, name + "-state"),
            "tls": {"handshake_timeout": 30},
            "routes": [],
            "default_upstream": None,
            "http": {"mode": "not_found"},
            # JSON lines: exact event times (the text format has whole seconds).
            "logging": {"level": log_level, "format": "json", "file": "-"},
            "issuance": self.issuance,
            "acme": {
                "account_email": "bench@example.com",
                "api_uri": pebble.directory_url,
                "tos_accepted": True,
                "domains": ["*." + DOMAIN],
                "allow_any_domain": False,
                "cert_type": "ecc",
                "storage": "shm",
            },
        }
        self.config_path = os.path.join(work, name + ".yaml")
        with open(self.config_path, "w") as f:
            yaml.safe_dump(config, f, sort_keys=False)
        self.proc = None

    def start(self, procs: B.Processes, work: str) -> None:
        self.proc = procs.start(self.name, B.kongacme_argv(self.config_path), cwd=B.REPO, env=B.kongacme_env(),
                                log_path=os.path.join(work, self.name + ".log"))
        B.wait_port(self.tls_port, self.proc, 120)
        B.wait_port(self.http_port, self.proc, 30)
        B.wait_port(self.admin_port, self.proc, 30)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def status(self) -> dict:
        import requests

        try:
            return requests.get("http://127.0.0.1:%d/status" % self.admin_port, timeout=5).json()
        except Exception as e:  # noqa: BLE001 - informational
            return {"error": repr(e)}

    def events(self) -> list[tuple[float, str, str, str]]:
        """The daemon's log as (time, level, namespace, text); non-JSON lines get time 0."""
        from twisted.logger import eventFromJSON, formatEvent

        out = []
        with open(self.proc.bench_log, errors="replace") as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    event = eventFromJSON(line)
                except ValueError:
                    out.append((0.0, "?", "?", line))
                    continue
                level = event.get("log_level")
                out.append((event.get("log_time") or 0.0, getattr(level, "name", str(level)),
                            event.get("log_namespace", "?"), formatEvent(event)))
        return out

    def log_text(self) -> str:
        """The log as text lines (``HH:MM:SS.mmm level namespace text``), also written next to the JSON."""
        lines = ["%s.%03d %s [%s] %s" % (time.strftime("%H:%M:%S", time.localtime(t)), int(t * 1000) % 1000,
                                         level, ns, text) for t, level, ns, text in self.events()]
        text = "\n".join(lines) + "\n"
        with open(self.proc.bench_log[:-4] + ".txt", "w") as f:
            f.write(text)
        return text


def proc_status(pid: int) -> dict:
    """VmHWM, VmRSS (KiB) and Threads of a process."""
    out = {}
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                key = line.split(":", 1)[0]
                if key in ("VmHWM", "VmRSS"):
                    out[key] = int(line.split()[1])
                elif key == "Threads":
                    out[key] = int(line.split()[1])
    except OSError:
        pass
    return out


ORDERING = re.compile(r"ordering a certificate for (\S+) \((\w+)\)")
ISSUED_MANAGER = re.compile(r"certificate for (\S+) issued in ([\d.]+) s")
ISSUED_ORDER = re.compile(r"certificate issued for (\S+) in ([\d.]+) ms")
REFUSED = re.compile(r"not ordering a certificate for (\S+) now: (.*)")
FAILED = re.compile(r"certificate order for (\S+) failed.*")


def parse_daemon_log(text: str) -> dict:
    orders = collections.Counter(m.group(1) for m in ORDERING.finditer(text))
    return {
        "orders": orders,
        "manager_seconds": {m.group(1): float(m.group(2)) for m in ISSUED_MANAGER.finditer(text)},
        "order_ms": {m.group(1): float(m.group(2)) for m in ISSUED_ORDER.finditer(text)},
        "refused": [m.group(0) for m in REFUSED.finditer(text)],
        "failed": [m.group(0) for m in FAILED.finditer(text)],
        "tracebacks": text.count("Traceback (most recent call last)"),
        # Debug logging only (--trace): the polls' waits, and CA requests.
        "poll_waits_s": [float(x) for x in re.findall(r"polling .*? not final, next in ([\d.]+) s", text)],
        "ca_requests": len(re.findall(r"\] (?:POST|GET|HEAD) https://\S+ -> \d+", text)),
        # Twisted logs "Starting factory _HTTP11ClientFactory(...)" for every
        # new HTTP connection the ACME client opens.
        "ca_connections": text.count("Starting factory _HTTP11ClientFactory"),
    }


def pebble_counts(text: str, names) -> dict:
    """
    What Pebble logged in ``text`` (a slice of its output): orders created
    ("Added order ... to the db"; Pebble does not log their identifiers),
    certificates issued, and http-01 validations per name (one "Pulled a
    task" line per challenge it validates; an order for a name whose
    authorization is pending or reused adds none).
    """
    wanted = set(names)
    validations: collections.Counter = collections.Counter()
    for m in re.finditer(r'Pulled a task from the Tasks queue: .*?Value:"([^"]+)"', text):
        if m.group(1) in wanted:
            validations[m.group(1)] += 1
    return {
        "orders_created": len(re.findall(r"Added order \S+ to the db", text)),
        "certificates_issued": len(re.findall(r"Issued certificate serial", text)),
        "validations": validations,
    }


# -- TLS client -------------------------------------------------------------------------------


def client_context(root_pem: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=root_pem)  # CERT_REQUIRED + check_hostname
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def verified_handshake(ctx: ssl.SSLContext, port: int, name: str, timeout: float = 120.0) -> tuple[float, str | None]:
    """
    One new connection with SNI ``name``: seconds from connect to a verified
    handshake (chain to Pebble's root, name matches), and None; or the
    seconds and the error.
    """
    t0 = time.perf_counter()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
            with ctx.wrap_socket(raw, server_hostname=name) as tls:
                elapsed = time.perf_counter() - t0
                cert = tls.getpeercert()
        sans = [v for k, v in cert.get("subjectAltName", ()) if k == "DNS"]
        if name not in sans and "*." + name.partition(".")[2] not in sans:  # a wildcard covers one label
            return elapsed, "certificate names %r" % (sans,)
        return elapsed, None
    except Exception as e:  # noqa: BLE001 - reported
        return time.perf_counter() - t0, "%s: %s" % (type(e).__name__, e)


def stats(values) -> dict:
    values = sorted(values)
    if not values:
        return {"n": 0}
    q = statistics.quantiles(values, n=10, method="inclusive") if len(values) > 1 else values * 9
    return {"n": len(values), "median": statistics.median(values), "p90": q[8], "min": values[0],
            "max": values[-1], "mean": statistics.fmean(values)}


def ms(value: float | None) -> str:
    return "-" if value is None else "%.0f" % (value * 1000)


def start_pyspy(procs, work: str, pid: int, name: str):
    path = os.path.join(work, name + "-pyspy.txt")
    proc = procs.start("issuance-pyspy-" + name, ["py-spy", "record", "--pid", str(pid), "--rate", "500",
                                                  "--format", "raw", "--output", path, "--nonblocking"],
                       log_path=os.path.join(work, name + "-pyspy.log"))
    time.sleep(1.0)
    proc.bench_output = path  # type: ignore[attr-defined]
    return proc


#: What the daemon's CPU samples pass through (inclusive shares, so they
#: overlap; a sample is counted once per marker).
PROFILE_MARKERS = (
    ("new CA connections: client TLS handshakes", lambda st: "Connection.do_handshake" in st
     and "SNITLSProtocol" not in st),
    ("new CA connections: an OpenSSL context each", lambda st: "OpenSSLCertificateOptions._makeContext" in st),
    ("new CA connections: getaddrinfo via the thread pool", lambda st: "GAIResolver" in st
     or "Condition.wait" in st or "Condition.notify" in st),
    ("socket send() (loopback delivery is charged here)", lambda st: "untilConcludes" in st),
    ("JWS signing (josepy ES256)", lambda st: "JWS.sign" in st),
    ("TLS listener: ClientHello, gate, handshakes, contexts", lambda st: "SNITLSProtocol" in st
     or "ContextBuilder" in st),
    ("port-80 challenge answers", lambda st: "kongacme/web/" in st),
    ("logging", lambda st: "twisted/logger" in st),
)


def stop_pyspy(proc, procs) -> dict | None:
    """Stop py-spy (SIGINT: it writes the file) and measure the markers."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, 2)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        procs.stop(proc)
    path = proc.bench_output
    if not os.path.exists(path):
        return {"error": "py-spy wrote nothing: " + B.tail(proc.bench_log, 5)}
    total = 0
    counts: collections.Counter = collections.Counter()
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            try:
                n = int(count)
            except ValueError:
                continue
            total += n
            for label, test in PROFILE_MARKERS:
                if test(stack):
                    counts[label] += n
    return {"file": path, "samples": total, "rate_hz": 500,
            "inclusive_share": {label: round(counts[label] / total, 3) if total else 0.0
                                for label, _ in PROFILE_MARKERS}}


# -- phase 1: first visitor ------------------------------------------------------------------------


def phase_latency(args, procs, work, pebble, http_port, deadline, results) -> None:
    daemon = Daemon("issuance-kongacme-latency", work, pebble, http_port, handshake_wait=10,
                    orders_per_minute=max(30, 2 * (args.names + 1)), max_orders_in_flight=10,
                    log_level="debug" if args.trace else "info")
    daemon.start(procs, work)
    ctx = client_context(pebble.root_pem)
    warm, err = verified_handshake(ctx, daemon.tls_port, "warmup." + DOMAIN)
    B.log("kongacme warm-up (account registration + first order): %s ms%s" % (ms(warm), " " + err if err else ""))
    profiler = start_pyspy(procs, work, daemon.pid, "latency") if args.profile else None
    cpu0 = B.cpu_seconds(daemon.pid)
    samples, errors = [], []
    names = []
    walls: dict[str, tuple[float, float]] = {}
    for i in range(args.names):
        if time.monotonic() > deadline:
            B.log("latency: budget exhausted after %d names" % i)
            break
        name = "n%d.%s" % (i, DOMAIN)
        names.append(name)
        wall0 = time.time()
        seconds, err = verified_handshake(ctx, daemon.tls_port, name)
        walls[name] = (wall0, wall0 + seconds)
        if err:
            errors.append({"name": name, "seconds": seconds, "error": err})
            B.log("latency: %s failed after %s ms: %s" % (name, ms(seconds), err))
        else:
            samples.append(seconds)
        # The same name again: now served from the cache (no order).
    cpu_orders = B.cpu_seconds(daemon.pid) - cpu0
    profile = stop_pyspy(profiler, procs) if profiler is not None else None
    again = [verified_handshake(ctx, daemon.tls_port, n)[0] for n in names[:10]]
    status = daemon.status()
    log = parse_daemon_log(daemon.log_text())
    procs.stop(daemon.proc)
    trace = order_timeline(daemon.events(), names, walls) if args.trace else None
    manager = [log["manager_seconds"][n] for n in names if n in log["manager_seconds"]]
    order = [log["order_ms"][n] / 1000 for n in names if n in log["order_ms"]]
    ok_names = [n for n in names if n not in {e["name"] for e in errors}]
    per_name = [{"name": n, "client_s": s, "daemon_manager_s": log["manager_seconds"].get(n),
                 "daemon_acme_order_s": log["order_ms"].get(n, 0) / 1000 or None} for n, s in zip(ok_names, samples)]
    beyond = [p["client_s"] - p["daemon_manager_s"] for p in per_name if p["daemon_manager_s"] is not None]
    results["latency"] = {
        "config": daemon.issuance,
        "warmup_s": warm, "warmup_error": err,
        "client": stats(samples),
        "errors": errors,
        "cached_handshake": stats(again),
        "daemon_manager_s": stats(manager),
        "daemon_acme_order_s": stats(order),
        "client_minus_daemon_order_s": stats(beyond),
        "orders_logged": sum(log["orders"][n] for n in names),
        "duplicate_orders": {n: c for n, c in log["orders"].items() if c > 1},
        "refused": log["refused"][:5], "failed": log["failed"][:5], "tracebacks": log["tracebacks"],
        "daemon_cpu_s": cpu_orders,
        "daemon_cpu_per_order_ms": cpu_orders / max(1, len(names)) * 1000,
        "ca_connections_opened": log["ca_connections"],
        "profile": profile,
        "daemon_status": status,
        "trace": trace,
        "samples": per_name,
    }
    if trace:
        B.log("median order timeline (ms after the client's connect; --trace, debug logging):\n" + "\n".join(
            "  %7.1f  %s" % (row["median_ms"], row["step"]) for row in trace["steps"]))
    c = results["latency"]["client"]
    if profile:
        B.log("latency profile (inclusive share of the daemon's py-spy samples): %s"
              % (profile.get("inclusive_share") or profile,))
    B.log("first visitor: daemon CPU %.1f ms per order; %d new HTTPS connections to the CA" % (
        results["latency"]["daemon_cpu_per_order_ms"], log["ca_connections"]))
    B.log("first visitor: n=%d median %s ms, p90 %s ms, max %s ms; daemon order median %s ms; errors %d" % (
        c["n"], ms(c.get("median")), ms(c.get("p90")), ms(c.get("max")),
        ms(results["latency"]["daemon_manager_s"].get("median")), len(errors)))


_IDS = re.compile(r"(?<=[/ ])[A-Za-z0-9_-]{16,}")


def order_timeline(events, names, walls) -> dict:
    """
    For sequential orders (one name at a time): every daemon event between a
    client's connect and its verified handshake, as milliseconds after the
    connect, with the host and ACME object ids blanked out; then the median
    offset of each (step, occurrence) over all names. Steps seen in fewer
    than half of the orders (badNonce retries, extra polls) are listed with
    their count.
    """
    per_step: dict[tuple[str, int], list[float]] = collections.defaultdict(list)
    order_of: dict[tuple[str, int], float] = {}
    timed = [n for n in names if n in walls]
    for i, name in enumerate(timed):
        start, end = walls[name]
        # Log lines written just after the handshake still belong to this
        # order, up to the next client's connect.
        stop = walls[timed[i + 1]][0] if i + 1 < len(timed) else end + 0.05
        seen: collections.Counter = collections.Counter()
        for t, level, ns, text in events:
            if not start - 0.001 <= t < stop:
                continue
            step = _IDS.sub("<id>", text.replace(name, "<host>"))
            step = re.sub(r"[a-z0-9-]+\." + re.escape(DOMAIN), "<other host>", step)
            step = re.sub(r"\d{4}-\d\d-\d\dT[\d:]+(\+00:00)?", "<t>", step)
            step = re.sub(r"\d+\.\d+ s\b", "<n> s", step)
            step = re.sub(r"in [\d.]+ ms", "in <n> ms", step)
            step = re.sub(r"127\.0\.0\.1:\d+", "<addr>", step)
            seen[step] += 1
            key = (step, seen[step])
            per_step[key].append((t - start) * 1000)
            order_of.setdefault(key, statistics.median(per_step[key]))
        per_step[("client: verified handshake done", 1)].append((end - start) * 1000)
    rows = []
    for (step, occurrence), offsets in per_step.items():
        rows.append({"step": step + (" (#%d)" % occurrence if occurrence > 1 else "") +
                     ("  [in %d of %d orders]" % (len(offsets), len(names)) if len(offsets) < len(names) else ""),
                     "median_ms": statistics.median(offsets), "n": len(offsets)})
    rows.sort(key=lambda r: r["median_ms"])
    return {"steps": rows}


# -- phase 2: ClientV2 baseline ---------------------------------------------------------------


class _Http01Handler(http.server.BaseHTTPRequestHandler):
    tokens: dict = {}
    protocol_version = "HTTP/1.1"

    def do_GET(self):  # noqa: N802 - http.server's name
        prefix = "/.well-known/acme-challenge/"
        body = self.tokens.get(self.path[len(prefix):]) if self.path.startswith(prefix) else None
        if body is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


def phase_baseline(args, work, pebble, http_port, deadline, results) -> None:
    import josepy as jose
    from acme import challenges, crypto_util, errors as acme_errors, messages
    from acme import client as acme_client
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    server = http.server.ThreadingHTTPServer(("127.0.0.1", http_port), _Http01Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    # Count ClientV2's own sleeps (its fixed 1 s poll intervals), keeping them.
    slept = [0.0]
    real_time = acme_client.time

    class _Time:
        def __getattr__(self, attr):
            return getattr(real_time, attr)

        @staticmethod
        def sleep(seconds):
            slept[0] += seconds
            real_time.sleep(seconds)

    acme_client.time = _Time()
    retries = collections.Counter()

    def again_on_bad_nonce(fn, *a, **kw):
        # ClientNetwork.post retries badNonce once; at Pebble's 5% a second
        # rejection (0.25% of POSTs) ends certbot's issuance. Retry the call
        # here instead (counted), so the baseline finishes.
        for attempt in range(5):
            try:
                return fn(*a, **kw)
            except messages.Error as e:
                if e.code != "badNonce" or attempt == 4:
                    raise
                retries[fn.__name__] += 1

    try:
        account_key = jose.JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
        net = acme_client.ClientNetwork(account_key, alg=jose.ES256, verify_ssl=pebble.ca_pem,
                                        user_agent="kongacme-bench-clientv2")
        directory = acme_client.ClientV2.get_directory(pebble.directory_url, net)
        cv2 = acme_client.ClientV2(directory, net)
        t0 = time.perf_counter()
        again_on_bad_nonce(cv2.new_account, messages.NewRegistration.from_data(
            email="bench-clientv2@example.com", terms_of_service_agreed=True))
        register_s = time.perf_counter() - t0
        with open(pebble.root_pem, "rb") as f:
            root = x509.load_pem_x509_certificate(f.read())

        def issue(name: str) -> dict:
            slept0 = slept[0]
            t = {"start": time.perf_counter()}
            key = ec.generate_private_key(ec.SECP256R1())
            key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())
            csr_pem = crypto_util.make_csr(key_pem, [name])
            t["csr"] = time.perf_counter()
            orderr = again_on_bad_nonce(cv2.new_order, csr_pem)
            t["new_order"] = time.perf_counter()
            reused = 0
            for authzr in orderr.authorizations:
                if authzr.body.status == messages.STATUS_VALID:
                    reused += 1
                    continue
                challb = next(c for c in authzr.body.challenges if isinstance(c.chall, challenges.HTTP01))
                response, validation = challb.response_and_validation(account_key)
                _Http01Handler.tokens[challb.chall.encode("token")] = validation.encode()
                again_on_bad_nonce(cv2.answer_challenge, challb, response)
            t["answer"] = time.perf_counter()
            final = again_on_bad_nonce(cv2.poll_and_finalize, orderr,
                                       datetime.datetime.now() + datetime.timedelta(seconds=90))
            t["end"] = time.perf_counter()
            # Check (untimed): leaf for the name, chain up to Pebble's root.
            chain = x509.load_pem_x509_certificates(final.fullchain_pem.encode())
            sans = chain[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            assert sans.get_values_for_type(x509.DNSName) == [name], sans
            for child, parent in zip(chain, chain[1:] + [root]):
                child.verify_directly_issued_by(parent)
            return {"name": name, "total_s": t["end"] - t["start"], "key_csr_s": t["csr"] - t["start"],
                    "new_order_s": t["new_order"] - t["csr"], "answer_s": t["answer"] - t["new_order"],
                    "poll_finalize_s": t["end"] - t["answer"], "slept_s": slept[0] - slept0,
                    "authz_reused": reused}

        warm = issue("c-warmup." + DOMAIN)
        B.log("ClientV2 account registration %s ms, warm-up issuance %s ms" % (ms(register_s), ms(warm["total_s"])))
        runs, errors = [], []
        n = args.baseline_names if args.baseline_names is not None else args.names
        for i in range(n):
            if time.monotonic() > deadline:
                B.log("baseline: budget exhausted after %d names" % i)
                break
            name = "c%d.%s" % (i, DOMAIN)
            try:
                runs.append(issue(name))
            except (acme_errors.Error, messages.Error, AssertionError, Exception) as e:  # noqa: BLE001
                errors.append({"name": name, "error": "%s: %s" % (type(e).__name__, e)})
                B.log("baseline: %s failed: %s" % (name, e))
    finally:
        acme_client.time = real_time
        server.shutdown()
        server.server_close()
    total = [r["total_s"] for r in runs]
    results["baseline"] = {
        "client": "acme.client.ClientV2 (acme %s), requests, synchronous" % _version("acme"),
        "register_s": register_s, "warmup": warm,
        "total": stats(total),
        "without_sleep": stats([r["total_s"] - r["slept_s"] for r in runs]),
        "slept": stats([r["slept_s"] for r in runs]),
        "steps_median_s": {k: statistics.median(r[k] for r in runs) for k in
                           ("key_csr_s", "new_order_s", "answer_s", "poll_finalize_s")} if runs else {},
        "authz_reused": sum(r["authz_reused"] for r in runs),
        "bad_nonce_retries_by_bench": dict(retries),
        "errors": errors,
        "runs": runs,
    }
    b = results["baseline"]
    B.log("ClientV2: n=%d median %s ms (p90 %s), without its sleeps median %s ms; errors %d; badNonce re-tries %s" % (
        b["total"]["n"], ms(b["total"].get("median")), ms(b["total"].get("p90")),
        ms(b["without_sleep"].get("median")), len(errors), dict(retries)))


def _version(dist: str) -> str:
    from importlib.metadata import version

    try:
        return version(dist)
    except Exception:  # noqa: BLE001
        return "?"


# -- phase 3: burst ----------------------------------------------------------------------------


def concurrent_clients(ctx, port: int, names: list[str], deadline: float,
                       give_up: threading.Event | None = None) -> list[dict]:
    """
    One thread per entry of ``names``, released together; each connects
    (retrying after a failure, once a second, until ``deadline`` or
    ``give_up`` is set) until it gets a verified handshake for its name.
    """
    give_up = give_up or threading.Event()
    barrier = threading.Barrier(len(names) + 1)
    out: list[dict] = [{} for _ in names]

    def worker(i: int, name: str) -> None:
        barrier.wait()
        start = time.perf_counter()
        attempts, first_error = 0, None
        while True:
            attempts += 1
            remaining = max(1.0, deadline - time.monotonic())
            seconds, err = verified_handshake(ctx, port, name, timeout=min(120.0, remaining))
            if err is None:
                out[i] = {"name": name, "ok": True, "s": time.perf_counter() - start, "attempts": attempts,
                          "first_error": first_error, "last_handshake_s": seconds}
                return
            first_error = first_error or err
            if time.monotonic() > deadline or give_up.is_set():
                out[i] = {"name": name, "ok": False, "s": time.perf_counter() - start, "attempts": attempts,
                          "first_error": first_error, "error": err}
                return
            time.sleep(1.0)

    threads = [threading.Thread(target=worker, args=(i, n), daemon=True) for i, n in enumerate(names)]
    for t in threads:
        t.start()
    barrier.wait()
    for t in threads:
        t.join(max(1.0, deadline - time.monotonic() + 130))
    return out


class PebbleWatchdog(threading.Thread):
    """
    Notices when Pebble stops answering during a burst: its log has not
    grown for ``quiet`` seconds while clients are still waiting. Then sends
    Pebble SIGQUIT (the Go runtime writes every goroutine's stack to its
    log and exits) and tells the clients to give up.
    """

    def __init__(self, pebble: "Pebble", give_up: threading.Event, quiet: float = 20.0):
        super().__init__(daemon=True)
        self.pebble, self.give_up, self.quiet = pebble, give_up, quiet
        self.done = threading.Event()
        self.stalled_at: str | None = None

    def run(self):
        last, since = self.pebble.log_offset(), time.monotonic()
        while not self.done.wait(0.5):
            now = self.pebble.log_offset()
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since > self.quiet:
                self.stalled_at = time.strftime("%H:%M:%S")
                B.log("Pebble wrote nothing for %.0f s with clients waiting: SIGQUIT for a goroutine dump "
                      "(in %s)" % (self.quiet, self.pebble.proc.bench_log))
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pebble.proc.pid, 3)
                self.give_up.set()
                return


class MemorySampler(threading.Thread):
    def __init__(self, pid: int, interval: float = 0.02):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak_rss = 0
        self.peak_threads = 0
        self.stop_event = threading.Event()

    def run(self):
        while not self.stop_event.is_set():
            s = proc_status(self.pid)
            self.peak_rss = max(self.peak_rss, s.get("VmRSS", 0))
            self.peak_threads = max(self.peak_threads, s.get("Threads", 0))
            time.sleep(self.interval)


def phase_burst(args, procs, work, pebble, http_port, deadline, results) -> None:
    size = args.burst
    limit = max(200, size + args.same_name + 10)
    daemon = Daemon("issuance-kongacme-burst", work, pebble, http_port, handshake_wait=55,
                    orders_per_minute=max(1000, 2 * limit), max_orders_in_flight=limit,
                    log_level="debug" if args.trace else "info")
    daemon.start(procs, work)
    ctx = client_context(pebble.root_pem)
    warm, err = verified_handshake(ctx, daemon.tls_port, "burst-warmup." + DOMAIN)
    B.log("burst daemon warm-up: %s ms%s" % (ms(warm), " " + err if err else ""))
    mem_before = proc_status(daemon.pid)
    sampler = MemorySampler(daemon.pid)
    sampler.start()
    names = ["b%d.%s" % (i, DOMAIN) for i in range(size)]
    time.sleep(0.2)  # let Pebble finish logging the warm-up
    p_start = pebble.log_offset()
    cpu0 = B.cpu_seconds(daemon.pid)
    pebble_cpu0, own_cpu0 = B.cpu_seconds(pebble.proc.pid), time.process_time()
    t0 = time.perf_counter()
    profiler = start_pyspy(procs, work, daemon.pid, "burst") if args.profile else None
    give_up = threading.Event()
    watchdog = PebbleWatchdog(pebble, give_up)
    watchdog.start()
    clients = concurrent_clients(ctx, daemon.tls_port, names, min(deadline, time.monotonic() + 150), give_up)
    total = time.perf_counter() - t0
    watchdog.done.set()
    profile = stop_pyspy(profiler, procs) if profiler is not None else None
    cpu_burst = B.cpu_seconds(daemon.pid) - cpu0
    pebble_cpu, own_cpu = B.cpu_seconds(pebble.proc.pid) - pebble_cpu0, time.process_time() - own_cpu0
    sampler.stop_event.set()
    sampler.join()
    mem_after = proc_status(daemon.pid)
    ok = [c for c in clients if c.get("ok")]
    B.log("burst: %d/%d verified in %.2f s (daemon CPU %.2f s), VmHWM %d KiB (before %d KiB)" % (
        len(ok), size, total, cpu_burst, mem_after.get("VmHWM", 0), mem_before.get("VmHWM", 0)))

    time.sleep(0.2)
    p_mid = pebble.log_offset()
    # 20 clients, ONE new name.
    same = "same.%s" % DOMAIN
    t1 = time.perf_counter()
    same_clients = concurrent_clients(ctx, daemon.tls_port, [same] * args.same_name,
                                      min(deadline + 60, time.monotonic() + 60), give_up)
    same_total = time.perf_counter() - t1
    time.sleep(0.3)  # let the last log lines reach the files
    p_end = pebble.log_offset()
    status = daemon.status()
    log = parse_daemon_log(daemon.log_text())
    mem_end = proc_status(daemon.pid)
    procs.stop(daemon.proc)
    p_burst = pebble_counts(pebble.log_text(p_start, p_mid), names)
    p_same = pebble_counts(pebble.log_text(p_mid, p_end), [same])
    burst_orders = {n: log["orders"].get(n, 0) for n in names}
    lat = [c["s"] for c in ok]
    results["burst"] = {
        "config": daemon.issuance,
        "clients": size,
        "verified": len(ok),
        "first_attempt_verified": sum(1 for c in ok if c["attempts"] == 1),
        "retried_clients": sum(1 for c in clients if c.get("attempts", 1) > 1),
        "first_errors": collections.Counter((c.get("first_error") or "")[:120] for c in clients
                                            if c.get("first_error")).most_common(5),
        "failed": [c for c in clients if not c.get("ok")][:10],
        "pebble_stalled_at": watchdog.stalled_at,
        "total_s": total,
        "last_verified_s": max(lat) if lat else None,
        "client_latency": stats(lat),
        "daemon_cpu_s": cpu_burst,
        "daemon_cpu_per_order_ms": cpu_burst / max(1, size) * 1000,
        "pebble_cpu_s": pebble_cpu,
        "bench_clients_cpu_s": own_cpu,
        "ca_connections_opened": log["ca_connections"],  # whole daemon life: warm-up, burst, same name
        "trace": {"poll_waits": len(log["poll_waits_s"]), "poll_wait_total_s": sum(log["poll_waits_s"]),
                  "poll_waits_by_length": collections.Counter("%.2f" % w for w in log["poll_waits_s"]).most_common(),
                  "ca_requests": log["ca_requests"]} if args.trace else None,
        "profile": profile,
        "mem_before_kib": mem_before, "mem_after_burst_kib": mem_after, "mem_end_kib": mem_end,
        "sampled_peak_rss_kib": sampler.peak_rss, "sampled_peak_threads": sampler.peak_threads,
        "orders_daemon_log": sum(burst_orders.values()),
        "names_with_no_order": [n for n, c in burst_orders.items() if c == 0][:10],
        "duplicate_orders_daemon_log": {n: c for n, c in burst_orders.items() if c > 1},
        "pebble_orders_created": p_burst["orders_created"],
        "pebble_certificates_issued": p_burst["certificates_issued"],
        "pebble_validations": sum(p_burst["validations"].values()),
        "pebble_names_validated_twice": {n: c for n, c in p_burst["validations"].items() if c > 1},
        "daemon_manager_s": stats([log["manager_seconds"][n] for n in names if n in log["manager_seconds"]]),
        "refused": log["refused"][:5], "failed_orders": log["failed"][:5], "tracebacks": log["tracebacks"],
        "same_name": {
            "clients": args.same_name,
            "verified": sum(1 for c in same_clients if c.get("ok")),
            "total_s": same_total,
            "client_latency": stats([c["s"] for c in same_clients if c.get("ok")]),
            "orders_daemon_log": log["orders"].get(same, 0),
            "pebble_orders_created": p_same["orders_created"],
            "pebble_certificates_issued": p_same["certificates_issued"],
            "pebble_validations": p_same["validations"].get(same, 0),
        },
        "status_orders_started": ((status.get("issuance") or {}).get("stats") or {}).get("orders_started"),
        "daemon_status": status,
        "per_client": clients,
    }
    r = results["burst"]
    if profile:
        B.log("burst profile (inclusive share of the daemon's py-spy samples): %s"
              % (profile.get("inclusive_share") or profile,))
    B.log("burst: daemon CPU %.1f ms per order; %d new HTTPS connections to the CA; CPU seconds during the burst: "
          "daemon %.1f, Pebble %.1f, bench clients %.1f (of %.1f available on %d cores)" % (
              r["daemon_cpu_per_order_ms"], r["ca_connections_opened"], cpu_burst, pebble_cpu, own_cpu,
              total * (os.cpu_count() or 1), os.cpu_count() or 1))
    if r["trace"]:
        B.log("burst trace: %(ca_requests)d CA requests, %(poll_waits)d poll waits totalling %(poll_wait_total_s).1f s "
              "(by length: %(poll_waits_by_length)s)" % r["trace"])
    B.log("burst orders: daemon log %d (names ordered twice: %d), Pebble: %d orders created, %d certificates; "
          "same name: %d/%d verified, %d order(s) in the daemon log, %d created at Pebble" % (
              r["orders_daemon_log"], len(r["duplicate_orders_daemon_log"]), r["pebble_orders_created"],
              r["pebble_certificates_issued"], r["same_name"]["verified"], args.same_name,
              r["same_name"]["orders_daemon_log"], r["same_name"]["pebble_orders_created"]))


# -- main ----------------------------------------------------------------------------------------


def summary(results: dict) -> str:
    lines = []
    lat, base, burst = results.get("latency"), results.get("baseline"), results.get("burst")
    lines.append("%-52s %10s %10s %10s" % ("", "median ms", "p90 ms", "max ms"))
    if lat:
        c = lat["client"]
        lines.append("%-52s %10s %10s %10s" % ("kongacme first visitor (ClientHello->verified)", ms(c.get("median")),
                                               ms(c.get("p90")), ms(c.get("max"))))
        d = lat["daemon_manager_s"]
        lines.append("%-52s %10s %10s %10s" % ("  of which the daemon's order (log)", ms(d.get("median")),
                                               ms(d.get("p90")), ms(d.get("max"))))
        c2 = lat["cached_handshake"]
        lines.append("%-52s %10s %10s %10s" % ("kongacme same names again (cached)", ms(c2.get("median")),
                                               ms(c2.get("p90")), ms(c2.get("max"))))
    if lat:
        lines.append("%-52s %10s" % ("  (daemon CPU per sequential order, ms)", "%.0f" % lat["daemon_cpu_per_order_ms"]))
    if base:
        t = base["total"]
        lines.append("%-52s %10s %10s %10s" % ("ClientV2 issuance (key+CSR..poll_and_finalize)",
                                               ms(t.get("median")), ms(t.get("p90")), ms(t.get("max"))))
        w = base["without_sleep"]
        lines.append("%-52s %10s %10s %10s" % ("  ClientV2 minus its own time.sleep()", ms(w.get("median")),
                                               ms(w.get("p90")), ms(w.get("max"))))
    if lat and base and lat["client"].get("median") and base["total"].get("median"):
        lines.append("ratio kongacme / ClientV2 (medians): %.3f  (vs ClientV2 minus sleeps: %.2f)" % (
            lat["client"]["median"] / base["total"]["median"],
            lat["client"]["median"] / base["without_sleep"]["median"]))
    if burst:
        lines.append("burst: %d/%d verified (%d at the first attempt), total %.2f s, client median %s ms p90 %s ms; "
                     "daemon CPU %.2f s; VmHWM %d KiB (before %d); orders: daemon log %d (names twice: %d), "
                     "Pebble created %d, issued %d" % (
                         burst["verified"], burst["clients"], burst["first_attempt_verified"], burst["total_s"],
                         ms(burst["client_latency"].get("median")), ms(burst["client_latency"].get("p90")),
                         burst["daemon_cpu_s"], burst["mem_after_burst_kib"].get("VmHWM", 0),
                         burst["mem_before_kib"].get("VmHWM", 0), burst["orders_daemon_log"],
                         len(burst["duplicate_orders_daemon_log"]), burst["pebble_orders_created"],
                         burst["pebble_certificates_issued"]))
        lines.append("burst CPU seconds: daemon %.1f (%.0f ms per order), Pebble %.1f, bench clients %.1f; "
                     "%d new HTTPS connections from the daemon to the CA; daemon /status orders_started %s "
                     "(burst + warm-up + same name)%s" % (
                         burst["daemon_cpu_s"], burst["daemon_cpu_per_order_ms"], burst["pebble_cpu_s"],
                         burst["bench_clients_cpu_s"], burst["ca_connections_opened"],
                         burst["status_orders_started"],
                         "; PEBBLE STALLED at %s (goroutine dump in its log)" % burst["pebble_stalled_at"]
                         if burst["pebble_stalled_at"] else ""))
        s = burst["same_name"]
        lines.append("same name x%d: %d verified in %.2f s, orders: daemon log %d, Pebble created %d" % (
            s["clients"], s["verified"], s["total_s"], s["orders_daemon_log"], s["pebble_orders_created"]))
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.dns_stub:
        run_dns_stub(args.dns_stub)
        return 0
    start = time.monotonic()
    deadline = start + args.budget
    work = B.out_dir("issuance")
    results: dict = {"args": vars(args), "machine": B.machine_info(),
                     "pebble_env": None, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    B.log("machine:", results["machine"]["cpu_model"], "load", results["machine"]["loadavg_at_start"])
    with B.Processes() as procs:
        dns_port = start_dns(procs, work)
        http_port = B.free_port()
        pebble = Pebble(work)
        pebble.start(procs, http_port, dns_port, args.nonce_reject)
        results["pebble_env"] = pebble.env
        B.log("Pebble %s (httpPort %d, DNS stub %d)" % (pebble.directory_url, http_port, dns_port))
        # Budget shares: latency ~20%, baseline ~40%, burst the rest.
        if "latency" not in args.skip:
            phase_latency(args, procs, work, pebble, http_port, start + 0.25 * args.budget, results)
        if "baseline" not in args.skip:
            phase_baseline(args, work, pebble, http_port, start + 0.55 * args.budget, results)
        if "burst" not in args.skip:
            phase_burst(args, procs, work, pebble, http_port, deadline, results)
    results["wall_s"] = time.monotonic() - start
    results["loadavg_at_end"] = open("/proc/loadavg").read().split()[:3]
    path = B.save_json(args.json, results)
    text = summary(results)
    print(text)
    B.log("raw numbers: %s; logs: %s (%.0f s)" % (path, work, results["wall_s"]))
    ok = True
    if "latency" in results and results["latency"]["errors"]:
        ok = False
    if "burst" in results:
        b = results["burst"]
        if (b["verified"] != b["clients"] or b["duplicate_orders_daemon_log"] or b["pebble_orders_created"] != b["clients"]
                or b["same_name"]["orders_daemon_log"] != 1 or b["same_name"]["pebble_orders_created"] != 1):
            ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
