"""
Tests for the daemon as users run it: a real ``twistd -n kongacme`` process
(kongacme.tap, kongacme.service), real TLS clients, SIGHUP reloads.
"""

import hashlib
import json
import os
import socket

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from kongacme.testing import TestCA, write_certified_key
from kongacme.tls.fallback import FALLBACK_NAME

from tests import tlsclients
from tests.daemonproc import Daemon, ShowsDaemonOutput, free_port, not_with_workers, run_twistd
from tests.proxyproto_decoder import parse_header


class Tagged(Protocol):
    """An upstream that echoes with its tag in front of every chunk."""

    def dataReceived(self, data):
        self.transport.write(self.factory.tag + data)


def start_upstream(test, tag: bytes) -> int:
    factory = Factory.forProtocol(Tagged)
    factory.tag = tag
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    test.addCleanup(port.stopListening)
    return port.getHost().port


def static_daemon(test, engine: str = "twisted", **config) -> Daemon:
    """
    A daemon (not started) serving a static certificate for
    ``static.test`` routed to an upstream answering ``A:``, with a second
    upstream answering ``B:``; its TLS, HTTP and Admin listeners on free
    loopback ports. Sets ``dir``, ``ca``, ``cafile``, ``cert``, ``key``,
    ``upstream_a``, ``upstream_b``, ``tls_port``, ``http_port``,
    ``admin_port`` and ``daemon`` on ``test``, and stops the daemon at
    cleanup.

    :param engine: ``listen.engine``.
    :param config: top-level sections that replace the defaults'.
    """
    test.dir = os.path.abspath(test.mktemp())
    os.makedirs(test.dir)
    test.ca = TestCA.create()
    test.cafile = test.ca.write_ca(os.path.join(test.dir, "ca.pem"))
    test.cert, test.key = write_certified_key(test.ca.issue(["static.test"]), test.dir, "static")
    test.upstream_a = start_upstream(test, b"A:")
    test.upstream_b = start_upstream(test, b"B:")
    test.tls_port, test.http_port, test.admin_port = free_port(), free_port(), free_port()
    test.daemon = Daemon(test.dir, dict({
        "listen": {
            "tls": ["tcp:%d:interface=127.0.0.1" % test.tls_port],
            "http": ["tcp:%d:interface=127.0.0.1" % test.http_port],
            "admin": ["tcp:%d:interface=127.0.0.1" % test.admin_port],
            "engine": engine,
        },
        "state_dir": os.path.join(test.dir, "state"),
        "certificates": [{"cert": test.cert, "key": test.key}],
        "routes": [{"hosts": ["static.test"], "upstream": "127.0.0.1:%d" % test.upstream_a}],
    }, **config))
    test.addCleanup(test.daemon.stop)
    return test.daemon


class TwistdPluginTests(TestCase):
    """
    Tests for the twistd plugin's command line.
    """

    @inlineCallbacks
    def test_listed(self):
        """twistd --help lists the kongacme plugin."""
        code, output = yield run_twistd("--help")
        self.assertEqual(code, 0)
        self.assertIn("kongacme", output)

    @inlineCallbacks
    def test_missing_config(self):
        """Without --config twistd exits non-zero with a usage error."""
        code, output = yield run_twistd("-n", "kongacme")
        self.assertNotEqual(code, 0)
        self.assertIn("--config FILE is required", output)

    @inlineCallbacks
    def test_unknown_option(self):
        """An unknown option is a usage error."""
        code, output = yield run_twistd("-n", "kongacme", "--bogus")
        self.assertNotEqual(code, 0)
        self.assertIn("bogus", output)

    @inlineCallbacks
    def test_invalid_config(self):
        """An invalid config: non-zero exit, each problem with its field path."""
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        path = os.path.join(directory, "bad.yaml")
        with open(path, "w") as f:
            f.write("acme:\n  account_email: a@b.test\n  rsa_key_size: 1024\nroutes:\n  - hosts: [a.test]\n    upstream: nope\n")
        code, output = yield run_twistd("-n", "kongacme", "--config", path)
        self.assertNotEqual(code, 0)
        self.assertIn("acme.rsa_key_size: must be one of 2048, 3072, 4096", output)
        self.assertIn("routes[0].upstream", output)


class DaemonTests(ShowsDaemonOutput, TestCase):
    """
    Tests for a running daemon: serving, proxying, reloading on SIGHUP.

    :cvar workers: the daemon's ``workers`` (the subclass
        :class:`DaemonWorkersTests` runs with 2).
    """

    timeout = 90
    workers = 1
    #: The daemon's ``listen.engine`` (the lean subclasses run the same tests).
    engine = "twisted"

    @inlineCallbacks
    def setUp(self):
        self.daemon = static_daemon(self, tls={"handshake_timeout": 5}, workers=self.workers, engine=self.engine)
        self.daemon.config["default_upstream"] = "127.0.0.1:%d" % self.upstream_b
        yield self.daemon.start(self.tls_port)
        if self.workers > 1:
            yield self.daemon.wait_for("accepting:", count=self.workers)

    def verified(self):
        return tlsclients.client_context(self.cafile)

    @inlineCallbacks
    def test_serves_and_proxies(self):
        """Static certificate per SNI, fallback otherwise; bytes reach the routed upstream."""
        static = yield tlsclients.handshake(self.tls_port, "static.test", self.verified(), payload=b"hi")
        self.assertEqual(static["names"], ["static.test"])
        self.assertEqual(static["echo"], b"A:hi")
        other = yield tlsclients.handshake(self.tls_port, "other.test", tlsclients.client_context(), payload=b"yo")
        self.assertEqual(other["names"], [FALLBACK_NAME])
        self.assertEqual(other["echo"], b"B:yo")
        self.assertTrue(os.path.exists(os.path.join(self.dir, "state", "fallback", "cert.pem")))

    @inlineCallbacks
    def test_reload_good_config(self):
        """SIGHUP applies new routes, certificates and listeners; an open connection survives."""
        # A connection opened before the reload.
        raw = socket.create_connection(("127.0.0.1", self.tls_port))
        self.addCleanup(raw.close)
        held = tlsclients.client_context(self.cafile).wrap_socket(raw, server_hostname="static.test")
        yield deferToThread(held.sendall, b"one")
        first = yield deferToThread(held.recv, 100)
        self.assertEqual(first, b"A:one")

        new_cert, new_key = write_certified_key(self.ca.issue(["new.test"]), self.dir, "new")
        config = self.daemon.config
        config["certificates"].append({"cert": new_cert, "key": new_key})
        config["routes"] = [{"hosts": ["static.test", "new.test"], "upstream": "127.0.0.1:%d" % self.upstream_b}]
        extra_port = free_port()
        config["listen"]["tls"].append("tcp:%d:interface=127.0.0.1" % extra_port)
        self.daemon.write()
        self.daemon.signal()
        yield self.daemon.wait_for("configuration reloaded")
        if self.workers > 1:
            # A new generation of workers on both TLS ports.
            yield self.daemon.wait_for("accepting:", count=2 * self.workers)

        new = yield tlsclients.handshake(extra_port, "new.test", self.verified(), payload=b"x")
        self.assertEqual(new["names"], ["new.test"])
        self.assertEqual(new["echo"], b"B:x")
        rerouted = yield tlsclients.handshake(self.tls_port, "static.test", self.verified(), payload=b"y")
        self.assertEqual(rerouted["echo"], b"B:y")
        # The old connection keeps its upstream.
        yield deferToThread(held.sendall, b"two")
        second = yield deferToThread(held.recv, 100)
        self.assertEqual(second, b"A:two")

    @inlineCallbacks
    def test_reload_bad_config(self):
        """An invalid config on SIGHUP is logged with its field path; the old one keeps running."""
        self.daemon.write("acme:\n  account_email: nobody\nlisten:\n  tls: 42\n")
        self.daemon.signal()
        yield self.daemon.wait_for("reload rejected")
        self.assertIn("acme.account_email", self.daemon.output)
        still = yield tlsclients.handshake(self.tls_port, "static.test", self.verified(), payload=b"ok")
        self.assertEqual(still["echo"], b"A:ok")
        # A config that parses but names a missing certificate is rejected too.
        self.daemon.config["certificates"] = [{"cert": "/nonexistent.pem", "key": self.key}]
        self.daemon.write()
        self.daemon.signal()
        yield self.daemon.wait_for("reload rejected", count=2)
        still = yield tlsclients.handshake(self.tls_port, "static.test", self.verified(), payload=b"ok")
        self.assertEqual(still["names"], ["static.test"])

    @inlineCallbacks
    def test_reload_empty_file(self):
        """
        An empty or comments-only file on SIGHUP (a truncated write racing
        ``systemctl reload``) is rejected as empty; the running listeners and
        certificates stay.
        """
        for count, text in enumerate(("", "# nothing here yet\n"), start=1):
            with open(self.daemon.path, "w") as f:
                f.write(text)
            self.daemon.signal()
            yield self.daemon.wait_for("reload rejected", count=count)
            self.assertEqual(self.daemon.output.count("configuration file is empty"), count)
            still = yield tlsclients.handshake(self.tls_port, "static.test", self.verified(), payload=b"ok")
            self.assertEqual(still["names"], ["static.test"])
            self.assertEqual(still["echo"], b"A:ok")

    @inlineCallbacks
    def test_admin_status(self):
        """The Admin listener answers /health and /status."""
        out, err, code = yield tlsclients.run(
            "/usr/bin/curl", "-sS", "http://127.0.0.1:%d/status" % self.admin_port
        )
        self.assertEqual(code, 0, err)
        import json

        status = json.loads(out)
        self.assertIn("static.test", status["certificates"])


class DaemonWorkersTests(DaemonTests):
    """
    Tests for a running daemon with ``workers: 2``: TLS per SNI, proxying,
    reloads (applied and rejected) and the Admin API, through a master and
    two workers.
    """

    workers = 2
    test_reload_empty_file = not_with_workers()


class DaemonLeanTests(DaemonTests):
    """
    Tests for a running daemon with ``listen.engine: lean``: the same
    behaviour, the TLS listener accepting on the lean engine.
    """

    engine = "lean"

    def test_lean_engine_serves(self):
        """The TLS listener is the lean engine's, and static.test is served there (not handed over)."""
        self.assertIn("tls listener on tcp:%d:interface=127.0.0.1: lean engine" % self.tls_port, self.daemon.output)


class DaemonLeanWorkersTests(DaemonWorkersTests):
    """Tests for a running daemon with ``workers: 2`` and ``listen.engine: lean``."""

    engine = "lean"

    def test_lean_engine_serves(self):
        """Each worker accepts on the inherited TLS socket with the lean engine."""
        self.assertEqual(self.daemon.output.count("TLS socket served by the lean engine"), self.workers)


@implementer(IHalfCloseableProtocol)
class StreamUpstream(Protocol):
    """
    An upstream for stream tests. It records what it receives (PROXY header
    included); ``UP`` uploads are hashed and answered with the digest after
    the client's EOF; ``DOWN`` sends the factory's payload and closes.
    """

    def connectionMade(self):
        self.received = b""
        self.hash = hashlib.sha256()
        self.mode = None
        self.factory.connections.append(self)

    def dataReceived(self, data):
        if self.mode == "up":
            self.hash.update(data)
            return
        self.received += data
        if self.mode is None and self.factory.expect_proxy_header:
            parsed = parse_header(self.received)
            if parsed is None:
                return
            self.factory.headers.append(parsed[0])
            self.received = parsed[1]
            self.factory.expect_proxy_header = False
        if self.received.startswith(b"UP\n"):
            self.mode = "up"
            self.hash.update(self.received[3:])
        elif self.received.startswith(b"DOWN\n"):
            self.mode = "down"
            self.transport.write(self.factory.payload)
            self.transport.loseConnection()
        elif self.received.startswith(b"PING\n"):
            self.transport.write(b"PONG\n")

    def readConnectionLost(self):
        self.transport.write(self.hash.hexdigest().encode())
        self.transport.loseWriteConnection()

    def writeConnectionLost(self):
        self.transport.loseConnection()


def stream_blocking(port, server_name, payload=None, mode="close_notify", read_limit=None):
    """Upload ``payload`` after ``UP`` then half-close, or download after ``DOWN``."""
    if payload is not None:
        return tlsclients.half_close_blocking(port, server_name, b"UP\n" + payload, mode)
    return tlsclients.half_close_blocking(port, server_name, b"DOWN\n", mode)


class DaemonStreamTests(ShowsDaemonOutput, TestCase):
    """
    Tests for the full stack (TLS listener, proxy, upstream) in a real
    daemon process: large transfers, half-close, PROXY protocol headers.
    """

    timeout = 120
    #: The daemon's ``listen.engine``.
    engine = "twisted"

    @inlineCallbacks
    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.upstream = Factory.forProtocol(StreamUpstream)
        self.upstream.connections = []
        self.upstream.headers = []
        self.upstream.expect_proxy_header = False
        self.upstream.payload = os.urandom(50 * 1024 * 1024)
        port = reactor.listenTCP(0, self.upstream, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        upstream = "127.0.0.1:%d" % port.getHost().port
        self.tls_port = free_port()
        self.daemon = Daemon(
            self.dir,
            {
                "listen": {
                    "tls": ["tcp:%d:interface=127.0.0.1" % self.tls_port], "http": [], "admin": [], "engine": self.engine,
                },
                "state_dir": os.path.join(self.dir, "state"),
                "routes": [
                    {"hosts": ["v1.test"], "upstream": upstream, "proxy_protocol": "v1"},
                    {"hosts": ["v2.test"], "upstream": upstream, "proxy_protocol": "v2", "alpn": ["h2", "http/1.1"]},
                ],
                "default_upstream": upstream,
                "logging": {"format": "json", "level": "info"},
            },
        )
        self.addCleanup(self.daemon.stop)
        yield self.daemon.start(self.tls_port)

    @inlineCallbacks
    def test_upload_50mb_half_close(self):
        """50 MB up arrive intact; the client's close_notify reaches the upstream as EOF and the reply still comes back."""
        payload = os.urandom(50 * 1024 * 1024)
        reply = yield deferToThread(stream_blocking, self.tls_port, "any.test", payload)
        self.assertEqual(reply.decode(), hashlib.sha256(payload).hexdigest())

    @inlineCallbacks
    def test_download_50mb(self):
        """50 MB down arrive intact, and the upstream's close ends the client's stream."""
        received = yield deferToThread(stream_blocking, self.tls_port, "any.test")
        self.assertEqual(len(received), len(self.upstream.payload))
        self.assertEqual(hashlib.sha256(received).digest(), hashlib.sha256(self.upstream.payload).digest())

    @inlineCallbacks
    def test_tcp_fin_half_close(self):
        """A client's bare TCP FIN is forwarded as a half-close too."""
        reply = yield deferToThread(stream_blocking, self.tls_port, "any.test", b"abc", "fin")
        self.assertEqual(reply.decode(), hashlib.sha256(b"abc").hexdigest())

    @inlineCallbacks
    def test_proxy_protocol_v1(self):
        """A v1 route's upstream first sees a PROXY TCP4 line with the client's address."""
        self.upstream.expect_proxy_header = True
        context = tlsclients.client_context()
        result = yield tlsclients.handshake(self.tls_port, "v1.test", context, payload=b"PING\n")
        self.assertEqual(result["echo"], b"PONG\n")
        header = self.upstream.headers[0]
        self.assertEqual(header.version, 1)
        self.assertEqual(header.source.host, "127.0.0.1")
        self.assertEqual(header.destination.port, self.tls_port)

    @inlineCallbacks
    def test_proxy_protocol_v2(self):
        """A v2 route's upstream sees the client address, the SNI host and the negotiated ALPN."""
        self.upstream.expect_proxy_header = True
        context = tlsclients.client_context(alpn=["h2", "http/1.1"])
        result = yield tlsclients.handshake(self.tls_port, "v2.test", context, payload=b"PING\n")
        self.assertEqual(result["alpn"], "h2")
        header = self.upstream.headers[0]
        self.assertEqual(header.version, 2)
        self.assertEqual(header.authority, "v2.test")
        self.assertEqual(header.alpn, b"h2")
        self.assertEqual(header.destination.port, self.tls_port)

    @inlineCallbacks
    def test_json_logs(self):
        """With logging.format json every log line is a JSON object with structured fields."""
        received = yield deferToThread(tlsclients.raw_exchange_blocking, self.tls_port, b"garbage" * 10)
        self.assertEqual(received, b"")
        yield self.daemon.wait_for("dropping connection")
        events = [json.loads(line) for line in self.daemon.output.splitlines() if line.startswith("{")]
        dropped = [e for e in events if "dropping connection" in e["message"]]
        self.assertEqual(len(dropped), 1)
        self.assertIn("peer", dropped[0])
        self.assertFalse([line for line in self.daemon.output.splitlines() if line and not line.startswith("{")])


class DaemonStreamLeanTests(DaemonStreamTests):
    """
    Tests for the full stack with ``listen.engine: lean``: large transfers,
    half-close and PROXY headers through the lean engine.
    """

    engine = "lean"
