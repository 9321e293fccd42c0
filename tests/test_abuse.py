"""
The hardening issue's attack set, small enough for CI, against a real
daemon issuing from a real Pebble (``tests/abuse.py`` has the attacks;
``bench/abuse.py`` runs them full size). After each attack: the daemon is
up, a cached name still verifies, its file descriptors are back to where
they were, and its log has no traceback.
"""

from __future__ import annotations

import random
import time
from urllib.parse import urlsplit

from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests import abuse
from tests.clienthellos import client_hello_bytes
from tests.test_daemon_acme import AcmeDaemonMixin

CACHED = "cached.example.test"


class AbuseTests(AcmeDaemonMixin, TestCase):
    """
    Tests that a daemon under attack keeps serving, leaks no descriptors and
    logs no traceback.
    """

    timeout = 180

    @inlineCallbacks
    def start_attacked(self, config=None, **issuance):
        """
        A daemon with short deadlines and a cached certificate for
        :data:`CACHED`; records the descriptor baseline.
        """
        yield self.start(
            config=dict({"tls": {"handshake_timeout": 2}, "http": {"request_timeout": 2}}, **(config or {})),
            **issuance,
        )
        self.pid = self.daemon.transport.pid
        first = yield deferToThread(abuse.handshake_outcome, self.tls_port, CACHED, self.root)
        self.assertEqual(first, "verified")
        yield deferLater(reactor, 0.5, lambda: None)
        self.ca_ports = frozenset([urlsplit(self.pebble.directory_url).port])
        self.baseline = abuse.fd_count(self.pid, self.ca_ports)

    @inlineCallbacks
    def assert_healthy(self):
        """
        The daemon runs, :data:`CACHED` verifies, descriptors return to the
        baseline (within 20 s: deadlines close what the attack left open;
        the pool of kept-alive connections to the CA, which grows with the
        orders an attack starts, is not counted), and the log has no
        traceback.
        """
        self.assertFalse(self.daemon.collector.ended.called, self.daemon.output)
        outcome = yield deferToThread(abuse.handshake_outcome, self.tls_port, CACHED, self.root)
        self.assertEqual(outcome, "verified", self.daemon.output[-4000:])
        deadline = time.monotonic() + 20
        while abuse.fd_count(self.pid, self.ca_ports) > self.baseline + 2 and time.monotonic() < deadline:
            yield deferLater(reactor, 0.2, lambda: None)
        self.assertLessEqual(abuse.fd_count(self.pid, self.ca_ports), self.baseline + 2,
                             "descriptors (kept-alive connections to the CA aside) did not return to baseline")
        self.assertEqual(abuse.tracebacks(self.daemon.output), 0, self.daemon.output[-6000:])

    @inlineCallbacks
    def test_malformed_client_hellos(self):
        """
        140 hostile first flights (random bytes, flipped and truncated
        ClientHellos, short records, plain HTTP, SNI with a NUL byte or of
        300 bytes) are each answered or closed; none hangs.
        """
        yield self.start_attacked()
        inputs = abuse.malformed_inputs(random.Random(9), 140)
        counts = yield deferToThread(abuse.malformed_hellos, self.tls_port, inputs)
        self.assertEqual(counts.get("timeout", 0), 0, counts)
        yield self.assert_healthy()

    @inlineCallbacks
    def test_idle_connections(self):
        """
        300 connections that never send a byte are closed by the handshake
        deadline; a cached name verifies while they are open.
        """
        yield self.start_attacked()
        idle = yield deferToThread(abuse.open_idle, self.tls_port, 300)
        self.addCleanup(lambda: [s.close() for s in idle])
        outcome = yield deferToThread(abuse.handshake_outcome, self.tls_port, CACHED, self.root)
        self.assertEqual(outcome, "verified")
        closed = yield deferToThread(abuse.closed_by_server, idle, 15)
        self.assertEqual(closed, len(idle))
        yield self.assert_healthy()

    @inlineCallbacks
    def test_slowloris_tls_and_http(self):
        """
        Clients trickling a ClientHello (TLS port) or a request head (HTTP
        port) a byte at a time are cut by the deadlines.
        """
        yield self.start_attacked()
        hello = client_hello_bytes(CACHED)
        request = b"GET /.well-known/acme-challenge/x HTTP/1.1\r\nHost: a.example.test\r\nX-Pad: " + b"a" * 200
        results = yield gatherResults([
            deferToThread(abuse.slowloris, self.tls_port, 10, 8, hello, 0.3),
            deferToThread(abuse.slowloris, self.http_port, 10, 8, request, 0.3),
        ])
        for result in results:
            self.assertEqual(result["held"], 0, results)
        yield self.assert_healthy()

    @inlineCallbacks
    def test_random_sni_any_domain(self):
        """
        100 random names under ``allow_any_domain`` start no more orders than
        ``orders_per_minute``; every handshake completes (issued or
        fallback).
        """
        yield self.start_attacked(orders_per_minute=3)
        names = abuse.random_names(random.Random(3), 100, "rnd.example.test")

        def attack():
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(10) as pool:
                return list(pool.map(lambda n: abuse.handshake_outcome(self.tls_port, n, self.root), names))

        outcomes = yield deferToThread(attack)
        failed = [o for o in outcomes if o.startswith("failed")]
        self.assertEqual(failed, [])
        self.assertLessEqual(outcomes.count("verified"), 3 + 1)  # the cap, plus the cached name's order
        out = self.daemon.output
        self.assertLessEqual(out.count("ordering a certificate for ") - out.count("not ordering a certificate for "), 3 + 1)
        yield self.assert_healthy()

    @inlineCallbacks
    def test_admin_port_attacks(self):
        """
        On the Admin port: an unauthenticated 100 GB upload is answered 401
        from its head (before the body), 100 idle connections stop at the
        Admin cap while TLS for a cached name keeps verifying, and clients
        trickling a request are cut by ``admin.request_timeout``.
        """
        yield self.start_attacked(config={"admin": {"token": "s3cret", "request_timeout": 2}})
        upload = yield deferToThread(abuse.huge_upload, self.admin_port, 2.0)
        self.assertTrue(upload["status"].startswith("HTTP/1.1 401"), upload)
        idle = yield deferToThread(abuse.open_idle, self.admin_port, 100)
        self.addCleanup(lambda: [s.close() for s in idle])
        outcome = yield deferToThread(abuse.handshake_outcome, self.tls_port, CACHED, self.root)
        self.assertEqual(outcome, "verified")
        for sock in idle:
            sock.close()
        request = b"POST /acme HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\nX-Pad: " + b"a" * 200
        trickle = yield deferToThread(abuse.slowloris, self.admin_port, 10, 8, request, 0.3)
        self.assertEqual(trickle["held"], 0, trickle)
        yield self.assert_healthy()

    @inlineCallbacks
    def test_sighup_burst(self):
        """20 SIGHUPs in 2 s: the daemon stays up and serves."""
        yield self.start_attacked()
        yield deferToThread(abuse.sighup_burst, self.pid, 20, 2.0)
        yield self.daemon.wait_for("configuration reloaded")
        yield self.assert_healthy()
