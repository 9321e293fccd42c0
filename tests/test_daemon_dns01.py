"""
Tests for dns-01 and wildcard certificates in a running daemon against a
real Pebble pointed at a real BIND 9 (``tests.bind``): RFC 2136 updates
signed with TSIG, one wildcard order for many names, cleanup of the TXT
records, many names validating at once in one zone, and a wrong TSIG
secret (a clear error and a backoff).
"""

from __future__ import annotations

import base64
import json
import os

from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from kongacme.tls.fallback import FALLBACK_NAME
from tests import tlsclients
from tests.bind import BindFixture
from tests.daemonproc import not_with_workers
from tests.test_daemon_acme import AcmeDaemonMixin


class Dns01DaemonMixin(AcmeDaemonMixin):
    """A daemon answering dns-01 through a BIND started for each test, with Pebble resolving there."""

    domains = ("*.example.test", "example.test")

    @inlineCallbacks
    def start_dns01(self, wildcard=False, pebble=None, config=None, **dns01):
        self.bind = yield BindFixture.start(self, "example.test")
        yield self.start(
            pebble=dict(pebble or {}, dns_port=self.bind.port),
            config=config,
            challenge_types=["dns-01"],
            dns01=self.bind.dns01_config(**dns01),
            wildcard=wildcard,
            storage="kong",
        )

    def all_orders(self) -> int:
        return self.daemon.output.count("ordering a certificate for ")

    def pebble_orders(self) -> int:
        """Orders Pebble created ("Added order ... to the db")."""
        return self.pebble.output.count("Added order ")


class Dns01DaemonTests(Dns01DaemonMixin, TestCase):
    """Tests for dns-01 and wildcard certificates in a running daemon."""

    @inlineCallbacks
    def test_wildcard_one_order(self):
        """
        With issuance.wildcard, a.example.test and b.example.test (at once)
        get one certificate for *.example.test and example.test from one
        order, which verifies for both and for the base name; a deeper name
        gets its own; the TXT records are gone afterwards; the Admin API
        lists the wildcard entry and renews it with one order.
        """
        yield self.start_dns01(wildcard=True)
        results = yield gatherResults(
            [tlsclients.handshake(self.tls_port, name, self.verified(), payload=b"")
             for name in ("a.example.test", "b.example.test")]
        )
        self.assertEqual([sorted(r["names"]) for r in results], [["*.example.test", "example.test"]] * 2)
        self.assertEqual(results[0]["der"], results[1]["der"])
        self.assertEqual(self.orders("*.example.test"), 1)
        self.assertEqual(self.all_orders(), 1)
        self.assertEqual(self.pebble_orders(), 1)
        apex = yield tlsclients.handshake(self.tls_port, "example.test", self.verified(), payload=b"")
        self.assertEqual(apex["der"], results[0]["der"])
        self.assertEqual(self.all_orders(), 1)
        self.assertEqual((yield self.bind.txt("_acme-challenge.example.test")), [])

        deep = yield tlsclients.handshake(self.tls_port, "x.a.example.test", self.verified(), payload=b"")
        self.assertEqual(deep["names"], ["x.a.example.test"])
        self.assertEqual(self.all_orders(), 2)
        self.assertEqual((yield self.bind.txt("_acme-challenge.x.a.example.test")), [])

        status, listed = yield self.admin_get("/acme/certificates")
        self.assertEqual(status, 200)
        self.assertEqual(sorted(entry["host"] for entry in listed["data"]), ["*.example.test", "x.a.example.test"])
        status, body = yield self.admin_post("/acme/certificates/*.example.test/renew")
        self.assertEqual(status, 200, body)
        self.assertEqual(self.orders("*.example.test"), 2)
        self.assertEqual(self.all_orders(), 3)
        renewed = yield tlsclients.handshake(self.tls_port, "b.example.test", self.verified(), payload=b"")
        self.assertNotEqual(renewed["der"], results[0]["der"])
        self.assertEqual(sorted(renewed["names"]), ["*.example.test", "example.test"])

    @inlineCallbacks
    def test_post_acme_wildcard(self):
        """
        ``POST /acme host=*.example.test`` orders the wildcard certificate
        (then served for a name one label below, with no second order); a
        wildcard outside acme.domains is refused, as is a malformed one.
        """
        yield self.start_dns01(wildcard=True)
        status, body = yield self.admin_post("/acme", "-d", "host=*.example.test")
        self.assertEqual((status, body), (201, {"message": "certificate for host *.example.test is created"}))
        served = yield tlsclients.handshake(self.tls_port, "c.example.test", self.verified(), payload=b"")
        self.assertEqual(sorted(served["names"]), ["*.example.test", "example.test"])
        self.assertEqual(self.all_orders(), 1)
        status, body = yield self.admin_post("/acme", "-d", "host=*.other.test")
        self.assertEqual(status, 400)
        self.assertIn("not included in plugin config.domains", body["message"])
        status, body = yield self.admin_post("/acme", "-d", "host=*.ex_ample.test")
        self.assertEqual(status, 400)
        self.assertIn("is not allowed", body["message"])
        self.assertEqual(self.all_orders(), 1)

    @inlineCallbacks
    def test_post_acme_wildcard_needs_the_setting(self):
        """Without issuance.wildcard, ``POST /acme host=*.example.test`` says what is missing; nothing is ordered."""
        yield self.start_dns01()
        status, body = yield self.admin_post("/acme", "-d", "host=*.example.test")
        self.assertEqual(status, 400)
        self.assertIn("wildcard certificates need issuance.wildcard: true", body["message"])
        self.assertEqual(self.all_orders(), 0)

    @inlineCallbacks
    def test_wildcard_renewed_once(self):
        """
        The renewal service renews a wildcard certificate (60 s lifetime,
        due with a third left) once, under the wildcard's name, never under
        its base name, and the renewed one is served for both.
        """
        yield self.start_dns01(
            wildcard=True, pebble={"validity": 60}, config={"renewal": {"check_interval": 2, "first_check": 1}}
        )
        first = yield tlsclients.handshake(self.tls_port, "a.example.test", self.verified(), payload=b"")
        deadline = reactor.seconds() + 90
        while reactor.seconds() < deadline and "certificate for *.example.test renewed" not in self.daemon.output:
            yield deferLater(reactor, 0.5, lambda: None)
        self.assertIn("certificate for *.example.test renewed", self.daemon.output)
        for name in ("a.example.test", "example.test"):
            renewed = yield tlsclients.handshake(self.tls_port, name, self.verified(), payload=b"")
            self.assertNotEqual(renewed["der"], first["der"])
        self.assertEqual(self.daemon.output.count("renewing the certificate for *.example.test "), 1)
        self.assertNotIn("renewing the certificate for example.test ", self.daemon.output)
        self.assertEqual(self.all_orders(), 2)
        self.assertEqual(self.pebble_orders(), 2)

    @inlineCallbacks
    def test_ten_names_at_once(self):
        """Ten names of one zone ordered at once all validate, and leave no TXT record behind."""
        yield self.start_dns01()
        names = ["n%d.example.test" % (i,) for i in range(10)]
        results = yield gatherResults(
            [tlsclients.handshake(self.tls_port, name, self.verified(), payload=b"") for name in names]
        )
        self.assertEqual([r["names"] for r in results], [[name] for name in names])
        self.assertEqual(self.all_orders(), 10)
        left = yield gatherResults([self.bind.txt("_acme-challenge." + name) for name in names])
        self.assertEqual(left, [[]] * 10)

    @inlineCallbacks
    def test_wrong_tsig_secret(self):
        """
        A wrong TSIG secret: the order fails with an error naming BADSIG and
        the key, the visitor gets the fallback, and the name backs off (a
        second visitor starts no second order).
        """
        yield self.start_dns01(tsig_secret=base64.b64encode(os.urandom(32)).decode())
        context = tlsclients.client_context()
        first = yield tlsclients.handshake(self.tls_port, "a.example.test", context, payload=b"")
        self.assertEqual(first["names"], [FALLBACK_NAME])
        yield self.daemon.wait_for("next attempt in")
        self.assertIn("TSIG BADSIG: the secret of key acme-key is not the server's", self.daemon.output)
        second = yield tlsclients.handshake(self.tls_port, "a.example.test", context, payload=b"")
        self.assertEqual(second["names"], [FALLBACK_NAME])
        status, body = yield self.admin_post("/acme", "-d", "host=a.example.test")
        self.assertIn("please try again in", body["message"])
        self.assertEqual(self.all_orders(), 1)

    def admin_get(self, path):
        return self._admin(path)

    def admin_post(self, path, *args):
        return self._admin(path, "-X", "POST", *args)

    def _admin(self, path, *args):
        return tlsclients.run(
            "/usr/bin/curl", "-sS", "-w", "\n%{http_code}", *args, "http://127.0.0.1:%d%s" % (self.admin_port, path)
        ).addCallback(lambda r: (int(r[0].rsplit(b"\n", 1)[1]), json.loads(r[0].rsplit(b"\n", 1)[0] or b"null")))


class Dns01DaemonWorkersTests(Dns01DaemonTests):
    """
    The wildcard test with ``workers: 2``: one order for a. and
    b.example.test through a master and two workers.
    """

    workers = 2
    test_ten_names_at_once = not_with_workers()
    test_wildcard_renewed_once = not_with_workers()
    test_wrong_tsig_secret = not_with_workers()
