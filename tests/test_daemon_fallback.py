"""
Tests for fallback CAs (``issuance.fallback_issuers``) in a running daemon,
against two real Pebbles: the primary stopped, answering 503, or rate
limiting (a proxy of ``tests.cafault`` in front of the real Pebble), orders
succeed at the secondary; the certificate's CA is reported (Admin API,
metrics); the next renewal uses the primary once it is back; a primary
that hangs is passed over for a while after its timeout; a name the
primary refuses does not fall back.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase

from tests import tlsclients
from tests.cafault import FaultyCA
from tests.daemonproc import not_with_workers
from tests.pebble import PebbleFixture
from tests.test_daemon_acme import AcmeDaemonMixin

TRYING = "failed through the CA's fault"


class FallbackDaemonTests(AcmeDaemonMixin, TestCase):
    """
    Tests for a daemon with a primary CA and one fallback CA, each a Pebble
    with its own roots; the client trusts both. The fallback is added by a
    reload (SIGHUP) once the daemon runs, as an operator would.
    """

    @inlineCallbacks
    def start_daemon(self, proxy: bool = True, blocklist: tuple = (), hanging: bool = False) -> Any:
        self.domain_blocklist = blocklist
        self.proxy = None

        def primary_url(pebble: PebbleFixture) -> str:
            if hanging:
                # Accepts connections and never answers (not even TLS).
                port = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
                self.addCleanup(port.stopListening)
                return "https://127.0.0.1:%d/dir" % (port.getHost().port,)
            if not proxy:
                return pebble.directory_url
            self.proxy = FaultyCA.start(self, pebble)
            return self.proxy.directory_url

        yield self.start(api_uri=primary_url, storage="kong")
        self.primary = self.pebble
        self.primary_url = self.daemon.config["acme"]["api_uri"]
        self.secondary = yield PebbleFixture.start(self, self.http_port)
        self.root = os.path.join(self.dir, "roots.pem")
        self.intermediate = {}
        with open(self.root, "wb") as f:
            for name, pebble in (("primary", self.primary), ("secondary", self.secondary)):
                roots = yield pebble.roots()
                f.write(roots[0].public_bytes(serialization.Encoding.PEM))
                intermediates = yield pebble.intermediates()
                self.intermediate[name] = intermediates[0].subject
        self.daemon.config["issuance"]["fallback_issuers"] = [
            {"api_uri": self.secondary.directory_url, "ca_bundle": self.secondary.ca_bundle}
        ]
        self.daemon.write()
        self.daemon.signal()
        yield self.daemon.wait_for("configuration reloaded")

    @inlineCallbacks
    def first_visit(self, host: str) -> Any:
        """A verified handshake for ``host`` (the first visitor waits for its order): the leaf."""
        result = yield tlsclients.handshake(self.tls_port, host, tlsclients.client_context(self.root), payload=b"")
        self.assertEqual(result["names"], [host])
        return x509.load_der_x509_certificate(result["der"])

    def admin_call(self, path: str, *args: str) -> Any:
        return tlsclients.run(
            "/usr/bin/curl", "-sS", "-w", "\n%{http_code}", *args, "http://127.0.0.1:%d%s" % (self.admin_port, path)
        ).addCallback(lambda r: (int(r[0].rsplit(b"\n", 1)[1]), r[0].rsplit(b"\n", 1)[0]))

    @inlineCallbacks
    def assertIssuedBy(self, host: str, which: str, leaf: x509.Certificate) -> Any:
        """``leaf`` comes from ``which`` Pebble, and the Admin API says so."""
        self.assertEqual(leaf.issuer, self.intermediate[which])
        status, body = yield self.admin_call("/acme/certificates/" + host)
        self.assertEqual(status, 200, body)
        directory = self.primary_url if which == "primary" else self.secondary.directory_url
        self.assertEqual(json.loads(body)["data"]["acme_issuer"],
                         {"directory": directory, "fallback": which != "primary"})

    @inlineCallbacks
    def metric(self, name: str, **labels: str) -> Any:
        status, body = yield self.admin_call("/metrics")
        self.assertEqual(status, 200)
        wanted = "%s{%s}" % (name, ",".join('%s="%s"' % item for item in sorted(labels.items())))
        for line in body.decode().splitlines():
            if line.startswith(wanted + " "):
                return float(line.split()[-1])
        raise AssertionError("no %s in %s" % (wanted, body.decode()))

    @inlineCallbacks
    def test_primary_stopped(self) -> Any:
        """
        The primary Pebble is stopped: the first visitor's order goes to
        the secondary at once and the visitor gets a verified certificate
        from it; one line says why; Admin API and metrics name the CA.
        """
        yield self.start_daemon(proxy=False)
        yield self.primary.stop()
        leaf = yield self.first_visit("a.example.test")
        yield self.assertIssuedBy("a.example.test", "secondary", leaf)
        self.assertEqual(self.daemon.output.count(TRYING), 1)
        self.assertIn("by the fallback CA %s" % (self.secondary.directory_url,), self.daemon.output)
        fallbacks = yield self.metric("kongacme_acme_fallbacks_total", from_directory=self.primary_url,
                                      to_directory=self.secondary.directory_url)
        self.assertEqual(fallbacks, 1)
        by_issuer = yield self.metric("kongacme_certificates_by_issuer", directory=self.secondary.directory_url)
        self.assertEqual(by_issuer, 1)
        up = yield self.metric("kongacme_acme_issuer_up", directory=self.primary_url, role="primary")
        self.assertEqual(up, 0)

    @inlineCallbacks
    def fault_falls_back(self, mode: str, endpoint: str, path: str, host: str) -> Any:
        """The primary answers ``endpoint`` with ``mode``: ``host``'s order succeeds at the secondary."""
        yield self.start_daemon()
        self.proxy.fail(mode, (endpoint,))
        leaf = yield self.first_visit(host)
        yield self.assertIssuedBy(host, "secondary", leaf)
        self.assertEqual(self.proxy.faults[path], 1)
        self.assertEqual(self.daemon.output.count(TRYING), 1)

    def test_directory_503(self) -> Any:
        """The primary answers its directory with 503: the order succeeds at the secondary."""
        return self.fault_falls_back("503", "directory", "/dir", "b.example.test")

    def test_new_order_503(self) -> Any:
        """The primary's account works but newOrder answers 503: the order succeeds at the secondary."""
        return self.fault_falls_back("503", "new-order", "/order-plz", "c.example.test")

    def test_rate_limited(self) -> Any:
        """The primary answers newOrder with 429 rateLimited: the order succeeds at the secondary."""
        return self.fault_falls_back("429", "new-order", "/order-plz", "d.example.test")

    @inlineCallbacks
    def test_primary_back_renewal(self) -> Any:
        """
        A certificate from the fallback (the primary was gone) is renewed
        at the primary once it is back (POST /acme/certificates/<host>/renew).
        """
        yield self.start_daemon()
        yield self.proxy.down()
        leaf = yield self.first_visit("e.example.test")
        yield self.assertIssuedBy("e.example.test", "secondary", leaf)
        self.proxy.up()
        status, body = yield self.admin_call("/acme/certificates/e.example.test/renew", "-X", "POST")
        self.assertEqual(status, 200, body)
        self.assertEqual(json.loads(body)["data"]["acme_issuer"], {"directory": self.primary_url, "fallback": False})
        again = yield self.first_visit("e.example.test")
        self.assertNotEqual(again.serial_number, leaf.serial_number)
        yield self.assertIssuedBy("e.example.test", "primary", again)
        self.assertEqual(self.daemon.output.count(TRYING), 1)
        # One account at each CA, each registered when first needed.
        for directory in (self.primary_url, self.secondary.directory_url):
            self.assertEqual(len(re.findall(r"ACME account \S+ at %s" % re.escape(directory), self.daemon.output)), 1)

    @inlineCallbacks
    def test_primary_hangs(self) -> Any:
        """
        The primary accepts connections and never answers: the first order
        falls back after request_timeout (5 s here); the next ones skip the
        primary for a while (one 'not asking' line each) and fall back at once.
        """
        yield self.start_daemon(hanging=True)
        first = yield self.first_visit("f.example.test")
        yield self.assertIssuedBy("f.example.test", "secondary", first)
        self.assertIn("no complete answer within 5 s", self.daemon.output)
        second = yield self.first_visit("g.example.test")
        yield self.assertIssuedBy("g.example.test", "secondary", second)
        self.assertEqual(self.daemon.output.count(TRYING), 1)
        self.assertEqual(self.daemon.output.count("certificate order for g.example.test: not asking %s" % (
            self.primary_url,)), 1)

    @inlineCallbacks
    def test_refused_name_no_fallback(self) -> Any:
        """
        A name the primary refuses (rejectedIdentifier) is not tried at the
        secondary: the visitor gets the fallback certificate and the name
        backs off.
        """
        yield self.start_daemon(proxy=False, blocklist=("blocked.example.test",))
        result = yield tlsclients.handshake(self.tls_port, "blocked.example.test", tlsclients.client_context(),
                                            payload=b"")
        self.assertNotEqual(result["names"], ["blocked.example.test"])
        yield self.daemon.wait_for("certificate order for blocked.example.test failed")
        self.assertIn("rejectedIdentifier", self.daemon.output)
        self.assertNotIn(TRYING, self.daemon.output)
        # The fallback's account is registered on first use: never here.
        self.assertIn("ACME account", self.daemon.output)
        self.assertNotIn(" at %s" % (self.secondary.directory_url,), self.daemon.output)


class FallbackDaemonWorkersTests(FallbackDaemonTests):
    """
    The fallback with ``workers: 2`` (the master orders; the workers serve):
    the primary stopped, and its return for the next renewal.
    """

    workers = 2
    test_directory_503 = not_with_workers()
    test_new_order_503 = not_with_workers()
    test_rate_limited = not_with_workers()
    test_primary_hangs = not_with_workers()
    test_refused_name_no_fallback = not_with_workers()
