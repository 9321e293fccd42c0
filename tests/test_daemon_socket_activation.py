"""
Socket activation end to end (``systemd:`` endpoints, as
``etc/kongacme.socket`` and ``etc/kongacme-socket-activated.yaml`` ship):
a daemon given its TLS listening socket the way systemd gives it — the
socket as fd 3, ``LISTEN_FDS=1``, ``LISTEN_FDNAMES`` and ``LISTEN_PID`` its
own pid — serves it
with the lean engine (kongacme's own epoll) like a ``tcp:`` endpoint, and
with ``listen.engine: twisted`` through Twisted.
"""

from __future__ import annotations

import re
import socket
import ssl
import sys
import urllib.request

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.daemonproc import REPO, TWISTD, ShowsDaemonOutput, _Collector, child_env
from tests.test_daemon import static_daemon
from tests.tlsclients import handshake_blocking

#: Sets what systemd (227 and later) sets (sd_listen_fds(3)), then becomes the daemon (same pid).
ACTIVATE = 'LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=kongacme-tls exec "$@"'


class SocketActivationTests(ShowsDaemonOutput, TestCase):
    """A systemd: TLS socket, on either engine."""

    timeout = 120

    @inlineCallbacks
    def activated(self, engine: str):
        """A daemon whose TLS listener is a socket passed as systemd passes it; its output collector."""
        daemon = static_daemon(self, engine=engine)
        listening = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(listening.close)
        listening.bind(("127.0.0.1", 0))
        listening.listen(128)
        self.tls_port = listening.getsockname()[1]
        daemon.config["listen"]["tls"] = ["systemd:domain=INET:index=0"]
        daemon.write()
        daemon.collector = _Collector()
        daemon.transport = reactor.spawnProcess(
            daemon.collector, "/bin/sh",
            ["/bin/sh", "-c", ACTIVATE, "sh", sys.executable, "-c", TWISTD, "-n", "--pidfile=", "kongacme",
             "--config", daemon.path],
            env=child_env(), path=REPO, childFDs={0: "w", 1: "r", 2: "r", 3: listening.fileno()},
        )
        yield daemon.wait_for(" started: ", timeout=60)
        return daemon

    def request(self) -> dict:
        context = ssl.create_default_context(cafile=self.cafile)
        return handshake_blocking(self.tls_port, "static.test", context, b"ping")

    def engine_connections(self) -> dict[str, float]:
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % self.admin_port, timeout=10) as response:
            text = response.read().decode()
        return {path: float(value) for path, value in
                re.findall(r'kongacme_engine_connections_total\{path="(\w+)"\} ([0-9.e+]+)', text)}

    @inlineCallbacks
    def test_lean_engine(self):
        """The lean engine accepts on a systemd: INET socket and serves its connections itself."""
        daemon = yield self.activated("lean")
        self.assertIn("tls listener on systemd:domain=INET:index=0: lean engine", daemon.output)
        for _ in range(3):
            result = yield deferToThread(self.request)
            self.assertEqual(result["echo"], b"A:ping"[: len(result["echo"])])
            self.assertEqual(result["names"], ["static.test"])
        counts = yield deferToThread(self.engine_connections)
        self.assertEqual(counts.get("lean"), 3.0)

    @inlineCallbacks
    def test_twisted_engine(self):
        """listen.engine: twisted serves the same socket through Twisted (no engine counts)."""
        daemon = yield self.activated("twisted")
        self.assertNotIn("lean engine", daemon.output)
        result = yield deferToThread(self.request)
        self.assertEqual(result["names"], ["static.test"])
        counts = yield deferToThread(self.engine_connections)
        self.assertEqual(counts.get("lean", 0.0), 0.0)

    @inlineCallbacks
    def test_reload_keeps_serving(self):
        """A SIGHUP reload keeps the activated socket served by the lean engine."""
        daemon = yield self.activated("lean")
        daemon.signal()
        yield daemon.wait_for("configuration reloaded", timeout=30)
        for _ in range(2):
            result = yield deferToThread(self.request)
            self.assertEqual(result["names"], ["static.test"])
        counts = yield deferToThread(self.engine_connections)
        self.assertEqual(counts.get("lean"), 2.0)
