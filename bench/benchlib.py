"""
Shared plumbing for the bench/ scripts: certificates from kongacme's TestCA,
a kongacme daemon, HAProxy (TLS terminator and fast upstream), h2load, CPU
time from /proc, and cleanup of every process started.

Not a benchmark itself; imported by the scripts next to it.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import time
from typing import Iterable, Sequence

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
OUT = os.path.join(BENCH, "out")

if REPO not in sys.path:
    sys.path.insert(0, REPO)

TWISTD = "from twisted.scripts.twistd import run; run()"
CLK_TCK = os.sysconf("SC_CLK_TCK")

#: Cores: servers measured on SERVER_CPU, client and upstream on CLIENT_CPU.
SERVER_CPU = "0"
CLIENT_CPU = "1"

# Mozilla "intermediate", the same lists kongacme/tls/context.py uses.
TLS12_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)
TLS13_SUITES = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
CURVES = "X25519:P-256:P-384"


def log(*parts: object) -> None:
    print("[%s]" % time.strftime("%H:%M:%S"), *parts, file=sys.stderr, flush=True)


def out_dir(*names: str) -> str:
    path = os.path.join(OUT, *names)
    os.makedirs(path, exist_ok=True)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state); utime is field 14, stime field 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def cpu_seconds_sched(pid: int) -> float:
    """
    On-CPU time of all threads of a process from /proc/<pid>/task/*/schedstat
    (nanoseconds, so finer than the 10 ms ticks of /proc/<pid>/stat).
    """
    total = 0
    for tid in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/schedstat" % (pid, tid)) as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError):
            pass
    return total / 1e9


def descendants(pid: int) -> list[int]:
    """``pid`` and every live process below it (children, grandchildren …), from /proc/*/stat."""
    parent_of: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent_of[int(entry)] = int(fields[1])
    tree, frontier = [pid], [pid]
    while frontier:
        frontier = [child for child, parent in parent_of.items() if parent in frontier]
        tree.extend(frontier)
    return tree


def tree_cpu_seconds(pid: int) -> float:
    """
    CPU seconds of ``pid`` and every live process below it, plus the
    children they have already reaped (``cutime`` + ``cstime``): a master
    and all its workers, a replaced worker included.
    """
    total = 0
    for member in descendants(pid):
        try:
            with open("/proc/%d/stat" % member) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile: its parent's cutime has it once reaped
        total += sum(int(v) for v in fields[11:15])  # utime stime cutime cstime
    return total / CLK_TCK


def _tree_sched_seconds(pid: int) -> float:
    return sum(cpu_seconds_sched(member) for member in descendants(pid) if os.path.exists("/proc/%d" % member))


def wait_idle(pid: int, quiet: float = 0.5, threshold: float = 0.005, timeout: float = 30.0,
              step: float = 0.1) -> dict:
    """
    Wait until ``pid`` and its descendants are idle: their on-CPU time
    (schedstat, ns) grew by less than ``threshold`` s over the last
    ``quiet`` s. When a load generator exits, a server may still be
    closing thousands of sockets for a while; its CPU for a run is only
    complete after that.

    :return: ``{"waited_s": seconds, "idle": reached before timeout}``.
    """
    t0 = time.monotonic()
    samples = [(t0, _tree_sched_seconds(pid))]
    window = max(1, int(round(quiet / step)))
    while time.monotonic() - t0 < timeout:
        time.sleep(step)
        samples.append((time.monotonic(), _tree_sched_seconds(pid)))
        if len(samples) > window and samples[-1][1] - samples[-1 - window][1] < threshold:
            return {"waited_s": time.monotonic() - t0, "idle": True}
    return {"waited_s": time.monotonic() - t0, "idle": False}


def cpu_when_idle(pid: int, **kw) -> tuple[float, dict]:
    """:func:`tree_cpu_seconds` read once :func:`wait_idle` says the process tree is idle."""
    idle = wait_idle(pid, **kw)
    return tree_cpu_seconds(pid), idle


def loadavg() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def wait_for_quiet_machine(limit: float = 0.8, max_wait: float = 120.0) -> dict:
    """
    Wait until the 1-minute load average is below ``limit``, at most
    ``max_wait`` s. The machine is shared: a measured run should not start
    while others load it.

    :return: ``{"reached": bool, "waited_s": s, "loadavg": value at the end}``;
        logged when the limit was not reached.
    """
    t0 = time.monotonic()
    while True:
        load = loadavg()
        if load < limit:
            return {"reached": True, "waited_s": round(time.monotonic() - t0, 1), "loadavg": load}
        if time.monotonic() - t0 >= max_wait:
            log("NOTE: 1-minute load average still %.2f (>= %.2f) after %.0f s; measuring anyway"
                % (load, limit, max_wait))
            return {"reached": False, "waited_s": round(time.monotonic() - t0, 1), "loadavg": load}
        time.sleep(2.0)


def memory_kib(pid: int) -> dict:
    """``Rss``, ``Pss``, ``Shared_Clean`` … (KiB) from /proc/<pid>/smaps_rollup."""
    out: dict = {}
    with open("/proc/%d/smaps_rollup" % pid) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[-1] == "kB":
                out[parts[0].rstrip(":")] = int(parts[1])
    return out


def rss_kib(pid: int) -> int:
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


# -- machine -------------------------------------------------------------------


def _first(cmd: Sequence[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
        text = (out.stdout or out.stderr).strip()
        return text.splitlines()[0] if text else "?"
    except Exception as e:  # noqa: BLE001 - informational only
        return "? (%s)" % e


def code_version() -> dict:
    """Which kongacme code was measured: git HEAD, local changes, a hash of kongacme/*.py."""
    import hashlib

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", "-C", REPO, *args], capture_output=True, text=True, timeout=20).stdout.strip()
        except Exception:  # noqa: BLE001 - informational only
            return "?"

    digest = hashlib.sha256()
    newest = 0.0
    for root, dirs, files in os.walk(os.path.join(REPO, "kongacme")):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(root, name)
                with open(path, "rb") as f:
                    digest.update(path.encode() + b"\0" + f.read())
                newest = max(newest, os.path.getmtime(path))
    return {
        "git_head": git("log", "-1", "--format=%h %cI %s")[:160],
        "kongacme_local_changes": [line for line in git("status", "--porcelain", "--", "kongacme").splitlines()],
        "kongacme_py_sha256": digest.hexdigest()[:16],
        "kongacme_newest_file_mtime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(newest)),
    }


def machine_info() -> dict:
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    from OpenSSL import SSL
    import cryptography
    import OpenSSL
    import twisted

    import ssl

    try:
        loadavg = open("/proc/loadavg").read().split()[:3]
    except OSError:
        loadavg = []
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "twisted": twisted.__version__,
        "pyopenssl": OpenSSL.__version__,
        "cryptography": cryptography.__version__,
        "openssl_pyopenssl": SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode(),
        "openssl_python_ssl": ssl.OPENSSL_VERSION,
        "haproxy": _first(["haproxy", "-v"]),
        "h2load": _first(["h2load", "--version"]),
        "loadavg_at_start": loadavg,
        "code": code_version(),
    }


# -- processes -------------------------------------------------------------------


class Processes:
    """
    Every process a script starts, each in its own process group; all are
    stopped (SIGTERM, then SIGKILL) when the ``with`` block ends, also on
    Ctrl-C or SIGTERM.
    """

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def __enter__(self) -> "Processes":
        def _term(signum, frame):
            raise SystemExit(128 + signum)

        self._old = signal.signal(signal.SIGTERM, _term)
        return self

    def __exit__(self, *exc) -> None:
        self.stop_all()
        signal.signal(signal.SIGTERM, self._old)

    def start(self, name: str, argv: Sequence[str], cpu: str | None = None, log_path: str | None = None,
              **kw) -> subprocess.Popen:
        if cpu is not None:
            argv = ["taskset", "-c", cpu, *argv]
        if log_path is None:
            log_path = os.path.join(out_dir("logs"), name + ".log")
        logf = open(log_path, "wb")
        proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, **kw)
        logf.close()
        proc.bench_log = log_path  # type: ignore[attr-defined]
        proc.bench_name = name  # type: ignore[attr-defined]
        self.procs.append((name, proc))
        return proc

    def stop(self, proc: subprocess.Popen, timeout: float = 10.0) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        else:
            # The leader is gone; make sure nothing it started lingers.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        self.procs = [(n, p) for n, p in self.procs if p is not proc]

    def stop_all(self) -> None:
        for _, proc in reversed(list(self.procs)):
            try:
                self.stop(proc)
            except Exception as e:  # noqa: BLE001 - keep stopping the others
                log("could not stop", proc.pid, e)


def tail(path: str, n: int = 30) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("%s exited (%s):\n%s" % (proc.bench_name, proc.returncode, tail(proc.bench_log)))
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("%s did not listen on %d:\n%s" % (proc.bench_name, port, tail(proc.bench_log)))


# -- certificates ---------------------------------------------------------------------


def load_or_create_ca(directory: str):
    """A TestCA kept in ``directory`` (ca.pem, ca.key), reused if present."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from kongacme.testing import TestCA

    os.makedirs(directory, exist_ok=True)
    cert_path, key_path = os.path.join(directory, "ca.pem"), os.path.join(directory, "ca.key")
    if os.path.exists(cert_path) and os.path.exists(key_path):
        with open(cert_path, "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
        with open(key_path, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), None)
        return TestCA(certificate=cert, key=key)
    ca = TestCA.create("kongacme bench CA")
    ca.write_ca(cert_path)
    with open(key_path, "wb") as f:
        f.write(ca.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()))
    return ca


def issue_files(ca, directory: str, stem: str, names: Sequence[str], key_type: str = "ecc") -> dict:
    """
    Issue a leaf and write ``stem.crt``, ``stem.key`` and ``stem.pem``
    (chain + key, for HAProxy). Returns the three paths.
    """
    from kongacme.testing import write_certified_key

    certified = ca.issue(list(names), key_type=key_type)
    crt, key = write_certified_key(certified, directory, stem)
    pem = os.path.join(directory, stem + ".pem")
    with open(pem, "wb") as f:
        f.write(certified.chain_pem() + certified.key_pem())
    return {"cert": crt, "key": key, "pem": pem}


# -- kongacme -------------------------------------------------------------------------


def kongacme_config(directory: str, tls_port: int, certificates: list[dict], routes: list[dict],
                    fallback: dict, session_tickets: bool = True, backlog: int = 4096, engine: str = "") -> str:
    """Write a kongacme YAML config and return its path (``engine``: ``listen.engine``, omitted when empty)."""
    import yaml

    config = {
        "listen": {
            "tls": ["tcp:%d:interface=127.0.0.1:backlog=%d" % (tls_port, backlog)],
            "http": [],
            "admin": [],
        },
        "state_dir": os.path.join(directory, "state"),
        "tls": {
            "fallback_cert": fallback["cert"],
            "fallback_key": fallback["key"],
            "session_tickets": session_tickets,
            "handshake_timeout": 30,
        },
        "certificates": certificates,
        "routes": routes,
        "default_upstream": None,
        "proxy": {"connect_timeout": 5, "idle_timeout": 300},
        "logging": {"level": "warn", "format": "text", "file": "-"},
    }
    if engine:
        config["listen"]["engine"] = engine
    path = os.path.join(directory, "kongacme.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(config, f, sort_keys=False)
    return path


def kongacme_argv(config_path: str, twistd_opts: Sequence[str] = ()) -> list[str]:
    return [sys.executable, "-c", TWISTD, "-n", "--pidfile=", *twistd_opts, "kongacme", "--config", config_path]


def kongacme_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start_kongacme(procs: Processes, name: str, config_path: str, port: int, cpu: str = SERVER_CPU,
                   twistd_opts: Sequence[str] = (), timeout: float = 120.0) -> subprocess.Popen:
    proc = procs.start(name, kongacme_argv(config_path, twistd_opts), cpu=cpu, cwd=REPO, env=kongacme_env())
    wait_port(port, proc, timeout)
    return proc


# -- HAProxy ------------------------------------------------------------------------------


def haproxy_tls_config(port: int, pem: str, upstream_port: int, mode: str = "tcp",
                       session_tickets: bool = True, backlog: int = 4096, maxconn: int = 8000,
                       threads: int = 1) -> str:
    """
    HAProxy as the reference TLS terminator: ``threads`` threads (one by default), the same
    certificate, TLS 1.2-1.3 with Mozilla intermediate ciphers and curves,
    client cipher preference (as kongacme), forwarding to the upstream.
    """
    tickets = "" if session_tickets else " no-tls-tickets"
    http_bits = ""
    if mode == "http":
        http_bits = "    option http-server-close\n"
    return f"""\
global
    nbthread {threads}
    maxconn {maxconn}
    log stderr format raw local0 err
    ssl-default-bind-ciphers {TLS12_CIPHERS}
    ssl-default-bind-ciphersuites {TLS13_SUITES}
    ssl-default-bind-options prefer-client-ciphers ssl-min-ver TLSv1.2 ssl-max-ver TLSv1.3{tickets}
    ssl-default-bind-curves {CURVES}

defaults
    mode {mode}
    log global
    timeout connect 5s
    timeout client 300s
    timeout server 300s
{http_bits}
frontend tls
    bind 127.0.0.1:{port} ssl crt {pem} alpn h2,http/1.1 backlog {backlog}
    default_backend upstream

backend upstream
    server up 127.0.0.1:{upstream_port}
"""


def haproxy_upstream_config(port: int, backlog: int = 4096) -> str:
    """The fast upstream both proxies forward to: answers 200 "ok"."""
    return f"""\
global
    nbthread 1
    maxconn 9000
    log stderr format raw local0 err

defaults
    mode http
    log global
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout http-keep-alive 300s

frontend upstream
    bind 127.0.0.1:{port} backlog {backlog}
    http-request return status 200 content-type text/plain string ok
"""


def start_haproxy(procs: Processes, name: str, config_text: str, port: int, cpu: str) -> subprocess.Popen:
    path = os.path.join(out_dir("logs"), name + ".cfg")
    with open(path, "w") as f:
        f.write(config_text)
    check = subprocess.run(["haproxy", "-c", "-f", path], capture_output=True, text=True)
    if check.returncode != 0:
        raise RuntimeError("haproxy config %s invalid:\n%s%s" % (path, check.stdout, check.stderr))
    proc = procs.start(name, ["haproxy", "-db", "-f", path], cpu=cpu)
    wait_port(port, proc)
    return proc


# -- h2load ---------------------------------------------------------------------------------


def run_h2load(host: str, port: int, n: int, c: int, cpu: str = CLIENT_CPU, timeout: float = 300.0,
               extra: Sequence[str] = ()) -> dict:
    """
    ``h2load --h1 -n N -c C -t 1`` against https://HOST:PORT/ (SNI = HOST,
    TCP to 127.0.0.1). N == C gives one new TLS connection per request.
    """
    argv = ["taskset", "-c", cpu, "h2load", "--h1", "-n", str(n), "-c", str(c), "-t", "1",
            "--connect-to=127.0.0.1:%d" % port, *extra, "https://%s:%d/" % (host, port)]
    t0 = time.monotonic()
    res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    wall = time.monotonic() - t0
    text = res.stdout + res.stderr
    parsed = parse_h2load(text)
    parsed["wall"] = wall
    parsed["argv"] = " ".join(shlex.quote(a) for a in argv)
    parsed["returncode"] = res.returncode
    if res.returncode != 0 or parsed.get("succeeded", 0) == 0:
        raise RuntimeError("h2load failed (%s):\n%s" % (res.returncode, text))
    return parsed


def parse_h2load(text: str) -> dict:
    out: dict = {"raw_tail": "\n".join(text.strip().splitlines()[-20:])}
    m = re.search(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s", text)
    if m:
        secs = float(m.group(1)) / (1000.0 if m.group(2) == "ms" else 1.0)
        out["finished_s"] = secs
        out["req_per_s"] = float(m.group(3))
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                  r"(\d+) errored, (\d+) timeout", text)
    if m:
        keys = ("total", "started", "done", "succeeded", "failed", "errored", "timeout")
        out.update({k: int(v) for k, v in zip(keys, m.groups())})
    for key, pattern in (("tls_protocol", r"TLS Protocol: (\S+)"), ("cipher", r"Cipher: (\S+)"),
                         ("temp_key", r"Server Temp Key: (.+)"), ("alpn", r"Application protocol: (\S+)")):
        m = re.search(pattern, text)
        if m:
            out[key] = m.group(1).strip()
    return out


def tls_get(ctx, port: int, name: str, timeout: float = 30) -> tuple[float, bytes]:
    """
    One new TLS connection to 127.0.0.1:``port`` with SNI ``name``: a GET
    with ``Connection: close``, read to EOF.

    :return: ``(seconds from connect to handshake done, the answer)``.
    """
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
        with ctx.wrap_socket(raw, server_hostname=name) as tls:
            handshake = time.perf_counter() - t0
            tls.sendall(b"GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % name.encode())
            data = b""
            while True:
                chunk = tls.recv(65536)
                if not chunk:
                    break
                data += chunk
    return handshake, data


def tls_client_loop(port: int, names: Sequence[str], threads: int = 4) -> dict:
    """
    Full TLS 1.3 handshakes from Python's ssl module, one new connection per
    name in ``names`` (SNI = that name), ``threads`` at a time: each sends a
    GET with ``Connection: close`` and reads the answer to EOF. No session
    resumption. Run it from a process pinned to the client core.

    :return: ``{"ok": n, "errors": n, "wall": seconds, "first_error": str}``.
    """
    import ssl
    import threading

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_alpn_protocols(["http/1.1"])
    ok = [0] * threads
    errors = [0] * threads
    first_error: list[str] = []

    def worker(i: int) -> None:
        for name in names[i::threads]:
            try:
                _, data = tls_get(ctx, port, name)
                if not data.startswith(b"HTTP/1.1 200"):
                    raise RuntimeError("unexpected answer %r" % data[:60])
                ok[i] += 1
            except Exception as e:  # noqa: BLE001 - counted and reported
                errors[i] += 1
                if not first_error:
                    first_error.append("%s: %r" % (name, e))

    t0 = time.monotonic()
    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return {"ok": sum(ok), "errors": sum(errors), "wall": time.monotonic() - t0,
            "first_error": first_error[0] if first_error else None}


def tls13_tickets(host: str, port: int) -> int:
    """
    How many TLS 1.3 session tickets the server sends after one handshake
    (``openssl s_client`` counting "New Session Ticket" messages), or -1.
    """
    try:
        res = subprocess.run(
            ["openssl", "s_client", "-connect", "127.0.0.1:%d" % port, "-servername", host, "-tls1_3",
             "-alpn", "http/1.1", "-ign_eof"],
            input=b"GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % host.encode(),
            capture_output=True, timeout=20)
    except Exception:  # noqa: BLE001 - informational only
        return -1
    return res.stdout.decode(errors="replace").count("Post-Handshake New Session Ticket arrived")


def save_json(name: str, data: dict) -> str:
    path = os.path.join(out_dir(), name)
    with open(path, "w") as f:
        json.dump(data, f, indent=2, default=str)
    return path


def fmt_ratio(a: float, b: float) -> str:
    return "%.2f" % (a / b) if b else "n/a"
