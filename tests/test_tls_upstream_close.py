"""
Tests for kongacme.tls.protocol when the upstream ends the conversation
first (HTTP/1.0 responses, ``Connection: close``) and the client closes
after it: a real ``twistd kongacme`` child proxying to a real upstream,
real TLS clients (Python's ssl and curl).
"""

from __future__ import annotations

import os
import socket
import ssl

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from kongacme.testing import TestCA, write_certified_key

from tests import tlsclients
from tests.daemonproc import Daemon, ShowsDaemonOutput, free_port

#: The body the HTTP/1.0 upstream answers with (big enough to take several
#: TLS records, so "all bytes arrived" means something).
BODY = bytes(range(256)) * 400


class HTTP10Upstream(Protocol):
    """
    Answers the first request with an HTTP/1.0 response and no
    Content-Length, then closes: the end of the body is the end of the
    connection, as ``python3 -m http.server`` does.
    """

    answered = False

    def dataReceived(self, data: bytes) -> None:
        if self.answered or b"\r\n\r\n" not in data:
            return
        self.answered = True
        self.transport.write(b"HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n" + BODY)
        self.transport.loseConnection()


def fetch_until_close_blocking(port: int, server_name: str, cafile: str, client_close: str) -> tuple[bytes, bool]:
    """
    Send a GET, read until the server ends the stream, then close the way
    ``client_close`` says: "close_notify" (then the socket) or "fin" (the
    socket only).

    :return: everything read, and whether the stream ended with the
        server's close_notify (``False``: a bare TCP EOF).
    """
    context = tlsclients.client_context(cafile)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        tls = context.wrap_socket(raw, server_hostname=server_name, suppress_ragged_eofs=False)
        tls.sendall(b"GET / HTTP/1.0\r\nHost: %s\r\n\r\n" % server_name.encode())
        received = bytearray()
        clean = False
        while True:
            try:
                chunk = tls.recv(65536)
            except ssl.SSLEOFError:
                break
            if not chunk:
                clean = True
                break
            received += chunk
        if clean and client_close == "close_notify":
            tls.unwrap()
        else:
            # (wrap_socket moved the descriptor into ``tls``.)
            tls.shutdown(socket.SHUT_WR)
        tls.close()
        return bytes(received), clean


class UpstreamClosesFirstTests(ShowsDaemonOutput, TestCase):
    """
    Tests for a connection the upstream ends first and the client ends
    after (the daemon once logged ``AttributeError: 'NoneType' object has
    no attribute 'bio_read'`` for each).
    """

    timeout = 90

    @inlineCallbacks
    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        ca = TestCA.create()
        self.cafile = ca.write_ca(os.path.join(self.dir, "ca.pem"))
        cert, key = write_certified_key(ca.issue(["static.test"]), self.dir, "static")
        upstream = reactor.listenTCP(0, Factory.forProtocol(HTTP10Upstream), interface="127.0.0.1")
        self.addCleanup(upstream.stopListening)
        self.tls_port = free_port()
        self.daemon = Daemon(
            self.dir,
            {
                "listen": {
                    "tls": ["tcp:%d:interface=127.0.0.1" % self.tls_port],
                    "http": ["tcp:%d:interface=127.0.0.1" % free_port()],
                    "admin": ["tcp:%d:interface=127.0.0.1" % free_port()],
                },
                "state_dir": os.path.join(self.dir, "state"),
                "certificates": [{"cert": cert, "key": key}],
                "default_upstream": "127.0.0.1:%d" % upstream.getHost().port,
            },
        )
        self.addCleanup(self.daemon.stop)
        yield self.daemon.start(self.tls_port)

    def assertNoTraceback(self):
        output = self.daemon.output
        for marker in ("Traceback", "Unhandled Error", "bio_read"):
            self.assertNotIn(marker, output, output)

    @inlineCallbacks
    def test_python_client(self):
        """
        Each client gets the whole body and the server's close_notify,
        whether it then closes with close_notify or a bare FIN; the daemon
        logs no traceback.
        """
        for client_close in ("close_notify", "fin") * 5:
            body, clean = yield deferToThread(
                fetch_until_close_blocking, self.tls_port, "static.test", self.cafile, client_close
            )
            self.assertTrue(body.startswith(b"HTTP/1.0 200 OK\r\n"), body[:100])
            self.assertEqual(body.split(b"\r\n\r\n", 1)[1], BODY)
            self.assertTrue(clean, "no close_notify from the server (%s)" % (client_close,))
        # The daemon handles the last client's close after the client
        # returned: give it a moment before reading its log.
        yield deferLater(reactor, 0.3, lambda: None)
        self.assertNoTraceback()

    @inlineCallbacks
    def test_curl_http10(self):
        """
        ``curl -0`` (the reproduction from the issue), ten times: each exits
        0 with the whole body (curl fails on a TLS stream cut without
        close_notify); the daemon logs no traceback.
        """
        out_path = os.path.join(self.dir, "body")
        for _ in range(10):
            out, err, code = yield tlsclients.run(
                "/usr/bin/curl", "-sS", "-0", "--max-time", "15", "-o", out_path,
                "--cacert", self.cafile, "--resolve", "static.test:%d:127.0.0.1" % self.tls_port,
                "https://static.test:%d/" % self.tls_port,
            )
            self.assertEqual(code, 0, err)
            with open(out_path, "rb") as f:
                self.assertEqual(f.read(), BODY)
        yield deferLater(reactor, 0.3, lambda: None)
        self.assertNoTraceback()
