"""
Tests for issuance in a running daemon (kongacme.issuance wired by
kongacme.service) against a real Pebble: on-demand certificates for the
first visitor, one order for many handshakes, backoff, the Admin API.
"""

import json
import os

from cryptography.hazmat.primitives import serialization
from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase

from kongacme.tls.fallback import FALLBACK_NAME

from tests import tlsclients
from tests.daemonproc import Daemon, ShowsDaemonOutput, free_port, not_with_workers
from tests.pebble import PebbleFixture


class Echo(Protocol):
    def dataReceived(self, data):
        self.transport.write(data)


class AcmeDaemonMixin(ShowsDaemonOutput):
    """
    A daemon process issuing from a Pebble started for each test; a failing
    test's report ends with the daemon's output.
    """

    timeout = 120
    first_handshake = "wait"
    domain_blocklist: tuple = ()
    #: ``acme.domains``.
    domains: tuple = ("*.example.test", "localhost")
    #: The daemon's ``workers`` (subclasses run the representative tests with 2).
    workers = 1
    #: The daemon's ``listen.engine`` (the lean subclasses run the same tests).
    engine = "twisted"
    #: Only the TLS port reachable: Pebble validates tls-alpn-01 on it, no
    #: plain-HTTP listener (``listen.http: []``).
    tls_only = False

    @inlineCallbacks
    def start(self, api_uri=None, storage="shm", pebble=None, config=None, **issuance):
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.tls_port, self.http_port, self.admin_port = free_port(), free_port(), free_port()
        if self.tls_only:
            pebble = dict(pebble or {}, tls_port=self.tls_port)
        self.pebble = yield PebbleFixture.start(
            self, self.http_port, domain_blocklist=self.domain_blocklist, **(pebble or {})
        )
        roots = yield self.pebble.roots()
        self.root = os.path.join(self.dir, "pebble-root.pem")
        with open(self.root, "wb") as f:
            f.write(roots[0].public_bytes(serialization.Encoding.PEM))
        settings = {
            "first_handshake": self.first_handshake,
            "handshake_wait": 20,
            "ca_bundle": self.pebble.ca_bundle,
            "challenge_port": self.http_port,
            "request_timeout": 5,
        }
        settings.update(issuance)
        # An upstream, so served connections are proxied rather than closed
        # for want of a route.
        upstream = reactor.listenTCP(0, Factory.forProtocol(Echo), interface="127.0.0.1")
        self.addCleanup(upstream.stopListening)
        if self.workers > 1:
            config = dict(config or {}, workers=self.workers)
        self.daemon = Daemon(
            self.dir,
            dict(config or {}, **{
                "default_upstream": "127.0.0.1:%d" % upstream.getHost().port,
                "listen": {
                    "tls": ["tcp:%d:interface=127.0.0.1" % self.tls_port],
                    "http": [] if self.tls_only else ["tcp:%d:interface=127.0.0.1" % self.http_port],
                    "admin": ["tcp:%d:interface=127.0.0.1" % self.admin_port],
                    "engine": self.engine,
                },
                "state_dir": os.path.join(self.dir, "state"),
                "acme": {
                    "account_email": "ops@example.test",
                    # A callable gets the Pebble fixture (to put something in front of it).
                    "api_uri": (api_uri(self.pebble) if callable(api_uri) else api_uri) or self.pebble.directory_url,
                    "tos_accepted": True,
                    "cert_type": "ecc",
                    "domains": list(self.domains),
                    "storage": storage,
                    "fail_backoff_minutes": 5,
                },
                "issuance": settings,
                "logging": {"level": "info"},
            }),
        )
        self.addCleanup(self.daemon.stop)
        yield self.daemon.start(self.tls_port)
        if self.workers > 1:
            yield self.daemon.wait_for("accepting:", count=self.workers)

    def verified(self):
        return tlsclients.client_context(self.root)

    def orders(self, host):
        return self.daemon.output.count("ordering a certificate for %s " % (host,))

    def admin(self, *args):
        return tlsclients.run(
            "/usr/bin/curl", "-sS", "-w", "\n%{http_code}", *args, "http://127.0.0.1:%d/acme" % self.admin_port
        ).addCallback(lambda r: (int(r[0].rsplit(b"\n", 1)[1]), json.loads(r[0].rsplit(b"\n", 1)[0] or b"null")))


class OnDemandTests(AcmeDaemonMixin, TestCase):
    """
    Tests for on-demand issuance with the first handshake held.
    """

    @inlineCallbacks
    def test_first_visitor_gets_valid_certificate(self):
        """The first TLS client for an admitted name gets a Pebble-issued certificate that verifies."""
        yield self.start()
        result = yield tlsclients.handshake(self.tls_port, "www.example.test", self.verified(), payload=b"")
        self.assertEqual(result["names"], ["www.example.test"])
        self.assertEqual(self.orders("www.example.test"), 1)
        again = yield tlsclients.handshake(self.tls_port, "www.example.test", self.verified(), payload=b"")
        self.assertEqual(again["names"], ["www.example.test"])
        self.assertEqual(self.orders("www.example.test"), 1)

    @inlineCallbacks
    def test_twenty_handshakes_one_order(self):
        """Twenty simultaneous handshakes for one new name share one order and all verify."""
        yield self.start()
        results = yield gatherResults(
            [tlsclients.handshake(self.tls_port, "burst.example.test", self.verified(), payload=b"") for _ in range(20)]
        )
        self.assertEqual({tuple(r["names"]) for r in results}, {("burst.example.test",)})
        self.assertEqual(self.orders("burst.example.test"), 1)

    @inlineCallbacks
    def test_not_admitted_gets_fallback(self):
        """A name outside domains gets the fallback certificate and no order."""
        yield self.start()
        result = yield tlsclients.handshake(self.tls_port, "evil.test", tlsclients.client_context(), payload=b"")
        self.assertEqual(result["names"], [FALLBACK_NAME])
        self.assertNotIn("ordering a certificate", self.daemon.output)

    @inlineCallbacks
    def test_kong_storage_survives_restart(self):
        """With storage: kong a restarted daemon serves the stored certificate without a new order."""
        yield self.start(storage="kong")
        first = yield tlsclients.handshake(self.tls_port, "keep.example.test", self.verified(), payload=b"")
        yield self.daemon.stop()
        yield self.daemon.start(self.tls_port)
        yield self.daemon.wait_for("certificate(s) loaded from storage")
        second = yield tlsclients.handshake(self.tls_port, "keep.example.test", self.verified(), payload=b"")
        self.assertEqual(first["names"], second["names"])
        self.assertEqual(self.orders("keep.example.test"), 0)  # output of the new process only


class OnDemandWorkersTests(OnDemandTests):
    """
    Tests for on-demand issuance with ``workers: 2``: the first visitor and
    twenty simultaneous handshakes (one order) through a master and two
    workers.
    """

    workers = 2
    test_not_admitted_gets_fallback = not_with_workers()
    test_kong_storage_survives_restart = not_with_workers()


class OnDemandLeanTests(OnDemandTests):
    """
    Tests for on-demand issuance with ``listen.engine: lean``: the first
    visitor's handshake is handed to the Twisted path and held there until
    the certificate is issued; later ones find it cached.
    """

    engine = "lean"


class OnDemandLeanWorkersTests(OnDemandWorkersTests):
    """Tests for on-demand issuance with ``workers: 2`` and ``listen.engine: lean``."""

    engine = "lean"


class FallbackModeTests(AcmeDaemonMixin, TestCase):
    """
    Tests for first_handshake: fallback (Kong's behaviour).
    """

    first_handshake = "fallback"

    @inlineCallbacks
    def test_first_gets_fallback_then_issued(self):
        """The first client gets the fallback at once; once issued, clients get the new certificate."""
        yield self.start()
        first = yield tlsclients.handshake(self.tls_port, "bg.example.test", tlsclients.client_context(), payload=b"")
        self.assertEqual(first["names"], [FALLBACK_NAME])
        yield self.daemon.wait_for("certificate for bg.example.test issued")
        later = yield tlsclients.handshake(self.tls_port, "bg.example.test", self.verified(), payload=b"")
        self.assertEqual(later["names"], ["bg.example.test"])


class FailureTests(AcmeDaemonMixin, TestCase):
    """
    Tests for failing orders: backoff, a CA that is down.
    """

    domain_blocklist = ("blocked.example.test",)

    @inlineCallbacks
    def test_refused_name_backs_off(self):
        """A name the CA refuses: fallback served, the problem logged, no new order during the backoff."""
        yield self.start()
        first = yield tlsclients.handshake(self.tls_port, "blocked.example.test", tlsclients.client_context(), payload=b"")
        self.assertEqual(first["names"], [FALLBACK_NAME])
        yield self.daemon.wait_for("certificate order for blocked.example.test failed")
        self.assertIn("rejectedIdentifier", self.daemon.output)
        second = yield tlsclients.handshake(self.tls_port, "blocked.example.test", tlsclients.client_context(), payload=b"")
        self.assertEqual(second["names"], [FALLBACK_NAME])
        self.assertEqual(self.orders("blocked.example.test"), 1)
        code, body = yield self.admin("-d", "host=blocked.example.test")
        self.assertEqual(code, 500)
        self.assertIn("please try again in", body["message"])
        self.assertIn("because of previous failure", body["message"])

    @inlineCallbacks
    def test_ca_down(self):
        """With the CA unreachable the held handshake gets the fallback promptly and the daemon keeps serving."""
        yield self.start(api_uri="https://127.0.0.1:%d/dir" % (free_port(),))
        result = yield tlsclients.handshake(self.tls_port, "down.example.test", tlsclients.client_context(), payload=b"")
        self.assertEqual(result["names"], [FALLBACK_NAME])
        yield self.daemon.wait_for("certificate order for down.example.test failed")
        other = yield tlsclients.handshake(self.tls_port, "other.test", tlsclients.client_context(), payload=b"")
        self.assertEqual(other["names"], [FALLBACK_NAME])


class AdminApiTests(AcmeDaemonMixin, TestCase):
    """
    Tests for POST /acme (Kong's messages and status codes).
    """

    @inlineCallbacks
    def test_post_acme(self):
        """POST /acme issues (201), refuses bad input (400) and non-admitted hosts (400)."""
        yield self.start()
        code, body = yield self.admin("-d", "host=api.example.test")
        self.assertEqual((code, body), (201, {"message": "certificate for host api.example.test is created"}))
        served = yield tlsclients.handshake(self.tls_port, "api.example.test", self.verified(), payload=b"")
        self.assertEqual(served["names"], ["api.example.test"])
        code, body = yield self.admin("-X", "POST")
        self.assertEqual((code, body["message"]), (400, "host must be provided and containing a single domain"))
        code, body = yield self.admin("-d", "host=api.example.test:8443")
        self.assertEqual((code, body["message"]), (400, "port is not allowed in host"))
        code, body = yield self.admin("-d", "host=evil.test")
        self.assertEqual(code, 400)
        self.assertIn("host is not included in plugin config.domains", body["message"])
        code, body = yield self.admin("-H", "content-type: application/json", "-d", '["not an object"]')
        self.assertEqual((code, body["message"]), (400, "request body must be a JSON object"))

    @inlineCallbacks
    def test_sanity_check(self):
        """test_http_challenge_flow probes the challenge path and reports Kong's message."""
        yield self.start()
        code, body = yield self.admin("-d", "host=localhost", "-d", "test_http_challenge_flow=true")
        self.assertEqual((code, body), (200, {"message": "sanity test for host localhost passed"}))
        code, body = yield self.admin("-d", "host=nope.test", "-d", "test_http_challenge_flow=true")
        self.assertEqual(code, 400)
        self.assertEqual(
            body["message"],
            "problem found running sanity check for nope.test: host is not included in plugin config.domains",
        )


class AdminApiWorkersTests(AdminApiTests):
    """
    Tests for POST /acme with ``workers: 2``: the certificate issued in the
    master is served by the workers.
    """

    workers = 2
    test_sanity_check = not_with_workers()
