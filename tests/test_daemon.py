"""
Tests for the daemon as users run it: a real ``twistd -n kongacme`` process
(kongacme.tap, kongacme.service), real TLS clients, SIGHUP reloads.
"""

import os
import socket
import ssl

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from kongacme.testing import TestCA, write_certified_key
from kongacme.tls.fallback import FALLBACK_NAME

from tests import tlsclients
from tests.daemonproc import Daemon, free_port, run_twistd


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


class DaemonTests(TestCase):
    """
    Tests for a running daemon: serving, proxying, reloading on SIGHUP.
    """

    timeout = 90

    @inlineCallbacks
    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.ca = TestCA.create()
        self.cafile = self.ca.write_ca(os.path.join(self.dir, "ca.pem"))
        self.cert, self.key = write_certified_key(self.ca.issue(["static.test"]), self.dir, "static")
        self.upstream_a = start_upstream(self, b"A:")
        self.upstream_b = start_upstream(self, b"B:")
        self.tls_port, self.http_port, self.admin_port = free_port(), free_port(), free_port()
        self.daemon = Daemon(
            self.dir,
            {
                "listen": {
                    "tls": ["tcp:%d:interface=127.0.0.1" % self.tls_port],
                    "http": ["tcp:%d:interface=127.0.0.1" % self.http_port],
                    "admin": ["tcp:%d:interface=127.0.0.1" % self.admin_port],
                },
                "state_dir": os.path.join(self.dir, "state"),
                "certificates": [{"cert": self.cert, "key": self.key}],
                "routes": [{"hosts": ["static.test"], "upstream": "127.0.0.1:%d" % self.upstream_a}],
                "default_upstream": "127.0.0.1:%d" % self.upstream_b,
                "tls": {"handshake_timeout": 5},
            },
        )
        self.addCleanup(self.daemon.stop)
        yield self.daemon.start(self.tls_port)

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
        extra_port = free_port()
        config = self.daemon.config
        config["certificates"].append({"cert": new_cert, "key": new_key})
        config["routes"] = [{"hosts": ["static.test", "new.test"], "upstream": "127.0.0.1:%d" % self.upstream_b}]
        config["listen"]["tls"].append("tcp:%d:interface=127.0.0.1" % extra_port)
        self.daemon.write()
        self.daemon.signal()
        yield self.daemon.wait_for("configuration reloaded")

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
    def test_admin_status(self):
        """The Admin listener answers /health and /status."""
        out, err, code = yield tlsclients.run(
            "/usr/bin/curl", "-sS", "http://127.0.0.1:%d/status" % self.admin_port
        )
        self.assertEqual(code, 0, err)
        import json

        status = json.loads(out)
        self.assertIn("static.test", status["certificates"])
