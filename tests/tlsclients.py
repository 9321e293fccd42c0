"""
Real TLS clients for the tests: Python's ssl (blocking, run in a thread),
curl and openssl s_client (child processes). Shared by the TLS and daemon
tests.
"""

from __future__ import annotations

import socket
import ssl

from cryptography import x509
from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.internet.utils import getProcessOutputAndValue


def _names(der: bytes) -> list[str]:
    cert = x509.load_der_x509_certificate(der)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        return san.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        return []


def client_context(cafile: str | None = None, alpn=None, minimum=None, maximum=None) -> ssl.SSLContext:
    """A client context verifying against ``cafile`` (or not verifying)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if cafile:
        context.load_verify_locations(cafile)
    else:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if alpn:
        context.set_alpn_protocols(alpn)
    if minimum:
        context.minimum_version = minimum
    if maximum:
        context.maximum_version = maximum
    return context


def handshake_blocking(port: int, server_name: str | None, context: ssl.SSLContext, payload: bytes = b"ping",
                       session=None, timeout: float = 10.0) -> dict:
    """
    Connect, handshake, send ``payload`` and read the echo.

    :return: dict with ``der`` (the served leaf), ``names`` (its SAN), ``alpn``,
        ``version``, ``echo``, ``session``, ``reused``.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
        with context.wrap_socket(raw, server_hostname=server_name, session=session) as tls:
            tls.sendall(payload)
            echo = b""
            while len(echo) < len(payload):
                chunk = tls.recv(65536)
                if not chunk:
                    break
                echo += chunk
            der = tls.getpeercert(binary_form=True)
            return {
                "der": der,
                "names": _names(der),
                "alpn": tls.selected_alpn_protocol(),
                "version": tls.version(),
                "echo": echo,
                "session": tls.session,
                "reused": tls.session_reused,
            }


def handshake(port, server_name, context, **kwargs):
    """:func:`handshake_blocking` in a thread: a Deferred."""
    return deferToThread(handshake_blocking, port, server_name, context, **kwargs)


def run(executable: str, *args: str, env=None):
    """Run a child process: Deferred of (stdout, stderr, exit code)."""
    return getProcessOutputAndValue(executable, args, env=env or {"PATH": "/usr/bin:/bin"}, reactor=reactor)


def curl(url: str, *extra: str):
    """curl ``url`` printing ``<http code> <verify result> <http version>``."""
    return run(
        "/usr/bin/curl", "-sS", "--max-time", "15", "-o", "/dev/null",
        "-w", "%{http_code} %{ssl_verify_result} %{http_version}", *extra, url,
    )


def s_client(port: int, *extra: str):
    """openssl s_client against 127.0.0.1:port, stdin at EOF so it exits."""
    import shlex

    command = " ".join(
        shlex.quote(a) for a in ("/usr/bin/openssl", "s_client", "-connect", "127.0.0.1:%d" % port, "-brief") + extra
    )
    return run("/bin/sh", "-c", command + " </dev/null")


def raw_exchange_blocking(port: int, data: bytes, read_timeout: float = 5.0) -> bytes:
    """Send ``data`` on a plain socket and return what comes back before close or timeout."""
    with socket.create_connection(("127.0.0.1", port), timeout=read_timeout) as s:
        s.sendall(data)
        received = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                received += chunk
                if len(received) > 5:
                    break
        except (socket.timeout, ConnectionResetError):
            pass
        return received


def memory_client(server_name: str) -> tuple[ssl.SSLObject, ssl.MemoryBIO, ssl.MemoryBIO]:
    """
    A TLS client over memory BIOs, not started: ``(SSLObject, incoming,
    outgoing)``. A close_notify reads as the end of the stream, a bare EOF
    in ``incoming`` as an error (:func:`bare_eof`): Python sets
    ``OP_IGNORE_UNEXPECTED_EOF`` by default, which reads both alike.
    """
    context = client_context()
    context.options &= ~ssl.OP_IGNORE_UNEXPECTED_EOF
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    return context.wrap_bio(incoming, outgoing, server_hostname=server_name), incoming, outgoing


def bare_eof(error: ssl.SSLError) -> bool:
    """Whether ``error`` (from a :func:`memory_client` read) is a TCP EOF that came without close_notify."""
    return isinstance(error, ssl.SSLEOFError) or error.reason == "UNEXPECTED_EOF_WHILE_READING"


def memory_tls(sock: socket.socket, server_name: str):
    """
    A TLS client over memory BIOs on connected ``sock``, handshake done
    (so it can half-close either way, which ``SSLSocket`` cannot).

    :return: ``(SSLObject, incoming BIO, flush)``; ``flush()`` sends what
        the object wrote.
    """
    obj, incoming, outgoing = memory_client(server_name)

    def flush():
        data = outgoing.read()
        if data:
            sock.sendall(data)

    while True:
        try:
            obj.do_handshake()
            break
        except ssl.SSLWantReadError:
            flush()
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("closed during handshake")
            incoming.write(data)
    flush()
    return obj, incoming, flush


def read_until_end(sock: socket.socket, obj: ssl.SSLObject, incoming: ssl.MemoryBIO) -> tuple[bytes, str]:
    """
    Read plaintext from a :func:`memory_tls` connection until the server
    ends its side.

    :return: the plaintext, and how the server ended: ``"close_notify"`` or
        ``"eof without close_notify"``.
    """
    received = bytearray()
    while True:
        data = sock.recv(65536)
        if data:
            incoming.write(data)
        else:
            incoming.write_eof()
        try:
            while True:
                chunk = obj.read(65536)
                if not chunk:
                    return bytes(received), "close_notify"
                received += chunk
        except ssl.SSLZeroReturnError:
            return bytes(received), "close_notify"
        except ssl.SSLWantReadError:
            if not data:
                return bytes(received), "eof without close_notify"
        except ssl.SSLError as e:
            if not bare_eof(e):
                raise
            return bytes(received), "eof without close_notify"


def half_close_blocking(port: int, server_name: str, payload: bytes, mode: str) -> bytes:
    """
    TLS over memory BIOs so the client can half-close: send ``payload``,
    then close its write side (``mode`` "close_notify" or "fin"), then read
    until the server closes.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        obj, incoming, flush = memory_tls(sock, server_name)
        view = memoryview(payload)
        for start in range(0, len(payload), 16384):
            obj.write(view[start : start + 16384])
            flush()
        if mode == "close_notify":
            try:
                obj.unwrap()
            except ssl.SSLWantReadError:
                pass
            flush()
        else:
            sock.shutdown(socket.SHUT_WR)
        return read_until_end(sock, obj, incoming)[0]
