"""
Tests for tls-alpn-01 (RFC 8737) in running daemons against a real Pebble
validating on the daemon's TLS port, with no plain-HTTP listener: the
first visitor and ``POST /acme`` get certificates; with ``workers: 2`` a
worker answers the CA from the master's pending challenges; in a two-node
fleet on one Redis, an order started on node B validates through node A.
"""

from __future__ import annotations

import os
import re
import socket
import urllib.request

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import Factory
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests import tlsclients
from tests.daemonproc import ShowsDaemonOutput, free_port, not_with_workers
from tests.fleetnodes import redis_storage, start_nodes, write_root
from tests.pebble import PebbleFixture
from tests.redisfixture import RedisServer
from tests.test_daemon_acme import AcmeDaemonMixin, Echo


def metric_blocking(admin_port: int, name: str, labels: str) -> float:
    """One sample of the daemon's /metrics (0 when absent)."""
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % (admin_port,), timeout=5) as response:
        text = response.read().decode()
    match = re.search(r"^%s\{%s\} (\S+)$" % (re.escape(name), re.escape(labels)), text, re.M)
    return float(match.group(1)) if match else 0.0


@inlineCallbacks
def answered(admin_port: int, at_least: int = 0):
    """
    ``Deferred`` of the tls-alpn-01 validations a daemon answered, read
    again (up to 5 s) while below ``at_least``: workers report their
    counters to the master once a second.
    """
    deadline = reactor.seconds() + 5
    while True:
        count = yield deferToThread(
            metric_blocking, admin_port, "kongacme_tls_handshakes_total", 'outcome="acme_tls_alpn"'
        )
        if count >= at_least or reactor.seconds() > deadline:
            return count
        yield deferLater(reactor, 0.2, lambda: None)


def refused_port(port: int) -> bool:
    """Whether nothing listens on ``port`` (connection refused)."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


class TlsAlpnDaemonTests(AcmeDaemonMixin, TestCase):
    """Tests for tls-alpn-01 in a daemon reachable on its TLS port only."""

    tls_only = True

    def start_alpn(self):
        return self.start(challenge_types=["tls-alpn-01"])

    @inlineCallbacks
    def test_first_visitor(self):
        """
        The first visitor for a new name gets a verified certificate that
        Pebble validated over tls-alpn-01 on the TLS port (no HTTP
        listener); the validation was answered, not proxied, and counted
        as acme_tls_alpn.
        """
        yield self.start_alpn()
        self.assertTrue(refused_port(self.http_port))
        result = yield tlsclients.handshake(self.tls_port, "www.example.test", self.verified(), payload=b"")
        self.assertEqual(result["names"], ["www.example.test"])
        self.assertEqual(self.orders("www.example.test"), 1)
        self.assertGreaterEqual((yield answered(self.admin_port, 1)), 1)

    @inlineCallbacks
    def test_post_acme(self):
        """
        ``POST /acme`` issues through tls-alpn-01; afterwards an
        ``acme-tls/1`` hello for the name gets an alert (the challenge is
        no longer pending).
        """
        yield self.start_alpn()
        status, body = yield self.admin("-d", "host=api.example.test")
        self.assertEqual((status, body), (201, {"message": "certificate for host api.example.test is created"}))
        served = yield tlsclients.handshake(self.tls_port, "api.example.test", self.verified(), payload=b"")
        self.assertEqual(served["names"], ["api.example.test"])
        context = tlsclients.client_context(alpn=["acme-tls/1"])
        with self.assertRaises(Exception) as caught:
            yield tlsclients.handshake(self.tls_port, "api.example.test", context, payload=b"")
        self.assertIn("NO APPLICATION PROTOCOL", str(caught.exception).upper())


class TlsAlpnDaemonWorkersTests(TlsAlpnDaemonTests):
    """The first visitor with ``workers: 2``: a worker asks the master for the pending challenge."""

    workers = 2
    test_post_acme = not_with_workers()


class TlsAlpnFleetTests(ShowsDaemonOutput, TestCase):
    """
    Tests for two nodes on one Redis, no plain-HTTP listeners, Pebble
    validating tls-alpn-01 on node A's TLS port only.
    """

    timeout = 120

    def daemons(self):
        return [daemon for daemon, _ in getattr(self, "nodes", {}).values()]

    @inlineCallbacks
    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.redis = yield RedisServer.start(self)
        self.ports = {name: (free_port(), None, free_port()) for name in ("a", "b")}
        self.pebble = yield PebbleFixture.start(self, free_port(), tls_port=self.ports["a"][0])
        self.root = yield write_root(self.pebble, self.dir)
        upstream = reactor.listenTCP(0, Factory.forProtocol(Echo), interface="127.0.0.1")
        self.addCleanup(upstream.stopListening)
        self.nodes = yield Deferred.fromCoroutine(
            start_nodes(
                self, self.dir, self.ports, upstream.getHost().port, self.pebble, redis_storage(self.redis),
                issuance={"challenge_types": ["tls-alpn-01"]},
            )
        )

    @inlineCallbacks
    def test_ordered_on_b_validated_through_a(self):
        """
        ``POST /acme`` on node B: Pebble connects to node A's TLS port,
        which answers from the key authorization B put in Redis; the
        certificate is then served by both nodes.
        """
        b_admin = self.ports["b"][2]
        result = yield tlsclients.run(
            "/usr/bin/curl", "-sS", "-w", "\n%{http_code}", "-d", "host=shared.fleet.test",
            "http://127.0.0.1:%d/acme" % (b_admin,),
        )
        self.assertEqual(result[0].rsplit(b"\n", 1)[1], b"201", result)
        self.assertGreaterEqual((yield answered(self.ports["a"][2], 1)), 1)
        self.assertEqual((yield answered(b_admin)), 0)
        for name in ("b", "a"):
            served = yield tlsclients.handshake(
                self.nodes[name][1], "shared.fleet.test", tlsclients.client_context(self.root), payload=b""
            )
            self.assertEqual(served["names"], ["shared.fleet.test"])
