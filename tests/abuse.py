"""
The attack set of the hardening issue, as plain blocking functions over
real sockets: malformed ClientHellos, idle connections, slowloris on any
port, random SNI names, bursts of SIGHUP. Each is bounded in count and time
and only ever talks to 127.0.0.1. ``tests/test_abuse.py`` runs them small
against a daemon; ``bench/abuse.py`` runs them full size and records what
the daemon did.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import ssl
import time
from concurrent.futures import ThreadPoolExecutor

from tests.clienthellos import client_hello_bytes, with_raw_sni


def malformed_inputs(rng: random.Random, count: int) -> list[tuple[str, bytes]]:
    """
    ``count`` hostile first flights for a TLS port, of several kinds: random
    bytes, a real ClientHello with bytes flipped or cut short, a record
    header announcing more than it sends, plain HTTP, an SNI with a NUL
    byte, an SNI of 300 bytes.
    """
    hello = client_hello_bytes("hello.test")
    kinds = [
        ("random", lambda: rng.randbytes(rng.randint(1, 600))),
        ("bitflip", lambda: _flip(rng, hello)),
        ("truncated", lambda: hello[: rng.randint(1, len(hello) - 1)]),
        ("short_record", lambda: b"\x16\x03\x01\x40\x00" + hello[5:60]),
        ("http", lambda: b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("sni_nul", lambda: with_raw_sni(b"evil\x00.test")),
        ("sni_300", lambda: with_raw_sni(b"a" * 300)),
    ]
    return [kinds[i % len(kinds)][0:1] + (kinds[i % len(kinds)][1](),) for i in range(count)]


def _flip(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        at = rng.randrange(len(out))
        out[at] ^= 1 << rng.randrange(8)
    return bytes(out)


def send_and_read(port: int, data: bytes, timeout: float = 5.0) -> str:
    """
    Send ``data``, half-close, read until the server closes.

    :return: ``"closed"`` (the server closed, whatever it answered first),
        ``"reset"``, ``"refused"`` or ``"timeout"`` (the server neither
        answered nor closed in ``timeout`` seconds).
    """
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            try:
                sock.sendall(data)
                sock.shutdown(socket.SHUT_WR)
                while sock.recv(65536):
                    pass
            except socket.timeout:
                return "timeout"
            except ConnectionResetError:
                return "reset"
            return "closed"
    except ConnectionRefusedError:
        return "refused"
    except OSError:
        return "reset"


def malformed_hellos(port: int, inputs: list[tuple[str, bytes]], parallel: int = 8) -> dict[str, int]:
    """Send each input on its own connection; count the outcomes."""
    counts: dict[str, int] = {}
    with ThreadPoolExecutor(parallel) as pool:
        for outcome in pool.map(lambda item: send_and_read(port, item[1]), inputs):
            counts[outcome] = counts.get(outcome, 0) + 1
    return counts


def open_idle(port: int, count: int, timeout: float = 2.0) -> list[socket.socket]:
    """
    Open ``count`` connections that send nothing. Connections the kernel
    queues but the server has not accepted count too: that is the point of a
    connection cap.
    """
    sockets = []
    for _ in range(count):
        try:
            sockets.append(socket.create_connection(("127.0.0.1", port), timeout=timeout))
        except OSError:
            break
    return sockets


def closed_by_server(sockets: list[socket.socket], wait: float) -> int:
    """How many of ``sockets`` the server closed within ``wait`` seconds."""
    deadline = time.monotonic() + wait
    closed = 0
    for sock in sockets:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            while sock.recv(65536):
                pass
            closed += 1
        except (ConnectionResetError, BrokenPipeError):
            closed += 1
        except OSError:
            pass
    return closed


def slowloris(port: int, connections: int, duration: float, first: bytes, interval: float = 0.5) -> dict[str, int]:
    """
    ``connections`` clients that each send ``first`` one byte at a time,
    one every ``interval`` seconds, for at most ``duration`` seconds.

    :return: ``{"cut": n, "held": m}``: connections the server closed before
        the end, and those still open.
    """
    socks = open_idle(port, connections)
    alive = {id(s): s for s in socks}
    deadline = time.monotonic() + duration
    at = 0
    while alive and time.monotonic() < deadline:
        for key, sock in list(alive.items()):
            try:
                sock.send(first[at % len(first):at % len(first) + 1])
            except OSError:
                del alive[key]
        at += 1
        time.sleep(interval)
    held = len(alive)
    for sock in socks:
        sock.close()
    return {"cut": len(socks) - held, "held": held}


def random_names(rng: random.Random, count: int, suffix: str) -> list[str]:
    """``count`` random, valid host names under ``suffix``."""
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    return ["".join(rng.choice(alphabet) for _ in range(12)) + "." + suffix for _ in range(count)]


def handshake_outcome(port: int, name: str, cafile: str | None, timeout: float = 30.0) -> str:
    """
    One TLS handshake for ``name``.

    :return: ``"verified"`` (the certificate verifies for ``name`` against
        ``cafile``), ``"unverified"`` (a handshake with some other
        certificate), or ``"failed: <reason>"``.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if cafile:
        context.load_verify_locations(cafile)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
            with context.wrap_socket(raw, server_hostname=name):
                return "verified"
    except ssl.SSLCertVerificationError:
        return "unverified"
    except (OSError, ssl.SSLError) as e:
        return "failed: %s" % (e,)


def huge_upload(port: int, seconds: float) -> dict:
    """
    An unauthenticated ``POST /acme`` announcing 100 GB, sending as fast as
    it can for at most ``seconds``.

    :return: ``{"sent": bytes sent before the daemon answered, "status": its
        status line}``.
    """
    sent = 0
    status = b""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"POST /acme HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
                     b"Content-Length: 100000000000\r\n\r\n")
        sock.setblocking(False)
        chunk = b"x" * 65536
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                status += sock.recv(4096)
                if status:
                    break
            except BlockingIOError:
                pass
            except OSError:
                break
            try:
                sent += sock.send(chunk)
            except BlockingIOError:
                time.sleep(0.001)
            except OSError:
                break
    return {"sent": sent, "status": status.split(b"\r\n", 1)[0].decode(errors="replace")}


def sighup_burst(pid: int, count: int, within: float) -> None:
    """``count`` SIGHUPs to ``pid`` spread over ``within`` seconds."""
    for _ in range(count):
        os.kill(pid, signal.SIGHUP)
        time.sleep(within / count)


def fd_count(pid: int, except_to_ports: frozenset[int] = frozenset()) -> int:
    """
    Open file descriptors of ``pid``, leaving out TCP connections to any of
    ``except_to_ports`` (a pool of kept-alive connections to the CA grows
    with the orders an attack starts, and is no leak).
    """
    fds = os.listdir("/proc/%d/fd" % pid)
    if not except_to_ports:
        return len(fds)
    pooled = _socket_inodes_to(pid, except_to_ports)
    count = 0
    for fd in fds:
        try:
            target = os.readlink("/proc/%d/fd/%s" % (pid, fd))
        except OSError:
            continue
        if not (target.startswith("socket:[") and target[8:-1] in pooled):
            count += 1
    return count


def _socket_inodes_to(pid: int, ports: frozenset[int]) -> set[str]:
    inodes = set()
    for table in ("tcp", "tcp6"):
        try:
            with open("/proc/%d/net/%s" % (pid, table)) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if int(fields[2].rsplit(":", 1)[1], 16) in ports:
                        inodes.add(fields[9])
        except OSError:
            pass
    return inodes


def tracebacks(log_text: str) -> int:
    """Tracebacks and unhandled errors in a daemon's log."""
    return log_text.count("Traceback (most recent call last)") + log_text.count("Unhandled Error")
