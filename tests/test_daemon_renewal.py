"""
End-to-end renewal in a running daemon against a real Pebble issuing
short-lived certificates (``certificateValidityPeriod`` of a minute or
two): the served certificate changes without a restart and without a
failed handshake, and a CA that is down for a while during renewal is
retried, with log lines escalating, until the renewal succeeds.
"""

import time
from urllib.parse import urlparse

from cryptography import x509
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.protocols.portforward import ProxyFactory
from twisted.trial.unittest import TestCase

from tests import tlsclients
from tests.daemonproc import free_port, not_with_workers
from tests.test_daemon_acme import AcmeDaemonMixin

HOST = "renew.example.test"


class RenewalDaemonTests(AcmeDaemonMixin, TestCase):
    timeout = 240

    @inlineCallbacks
    def serve_until_renewed(self, first, deadline):
        """
        Handshake (verified) every 0.3 s until the served certificate is not
        ``first`` any more; every handshake must succeed.

        :return: ``(renewed leaf, handshakes made)``.
        """
        made = 0
        while time.monotonic() < deadline:
            result = yield tlsclients.handshake(self.tls_port, HOST, self.verified(), payload=b"x")
            made += 1
            self.assertEqual(result["names"], [HOST])
            self.assertEqual(result["echo"], b"x")
            leaf = x509.load_der_x509_certificate(result["der"])
            if leaf.serial_number != first.serial_number:
                return leaf, made
            yield deferLater(reactor, 0.3, lambda: None)
        self.fail("certificate not renewed in time; daemon output:\n" + self.daemon.output)

    @inlineCallbacks
    def test_renewed_without_restart_or_failed_handshake(self):
        """
        A 60-second certificate is renewed when a third of its lifetime
        remains (the 14-day threshold would renew it on every check), with
        the same key, and the daemon serves the new one while clients keep
        connecting.
        """
        yield self.start(
            pebble={"validity": 60},
            config={"renewal": {"check_interval": 2, "first_check": 1}},
        )
        first = yield tlsclients.handshake(self.tls_port, HOST, self.verified(), payload=b"")
        leaf = x509.load_der_x509_certificate(first["der"])
        lifetime = (leaf.not_valid_after_utc - leaf.not_valid_before_utc).total_seconds()
        self.assertLessEqual(lifetime, 61)
        renewed, made = yield self.serve_until_renewed(leaf, time.monotonic() + 90)
        self.assertGreater(made, 10)
        self.assertGreater(renewed.not_valid_after_utc, leaf.not_valid_after_utc)
        self.assertEqual(renewed.public_key().public_numbers(), leaf.public_key().public_numbers())
        self.assertIn("renewing the certificate for %s (third_of_lifetime" % (HOST,), self.daemon.output)
        self.assertIn("certificate for %s renewed" % (HOST,), self.daemon.output)
        # No restart: the daemon started once.
        self.assertEqual(self.daemon.output.count(" started: "), 1)

    @inlineCallbacks
    def test_ca_down_during_renewal(self):
        """
        The CA is unreachable when renewal comes due: attempts fail and are
        retried with backoff, logged as errors and then critical as expiry
        nears; when the CA returns the renewal succeeds before expiry and
        the new certificate is served.
        """
        # The daemon reaches Pebble through a TCP relay that the test takes
        # away (connection refused) and brings back on the same port.
        relay_port = free_port()
        relays = []
        connections = []

        class Relay(ProxyFactory):
            def buildProtocol(self, addr):
                protocol = ProxyFactory.buildProtocol(self, addr)
                connections.append(protocol)
                return protocol

        def relay_up(pebble_port):
            relays.append(reactor.listenTCP(relay_port, Relay("127.0.0.1", pebble_port), interface="127.0.0.1"))

        def relay_down():
            # No new connections, and the daemon's kept-alive ones are cut.
            d = relays[-1].stopListening()
            for protocol in connections:
                protocol.transport.loseConnection()
            return d

        def through_relay(pebble):
            relay_up(urlparse(pebble.directory_url).port)
            self.addCleanup(lambda: relays[-1].stopListening())
            return "https://127.0.0.1:%d/dir" % (relay_port,)

        yield self.start(
            api_uri=through_relay,
            pebble={"validity": 120},
            config={
                "renewal": {
                    "check_interval": 2,
                    "first_check": 1,
                    "backoff_initial": 2,
                    "backoff_max": 4,
                    "critical_days": 30 / 86400,
                }
            },
        )
        first = yield tlsclients.handshake(self.tls_port, HOST, self.verified(), payload=b"")
        leaf = x509.load_der_x509_certificate(first["der"])
        yield relay_down()
        # Due 80 s after issuance (40 s left); under 30 s left is critical.
        failed = "renewal of the certificate for %s failed" % (HOST,)
        yield self.daemon.wait_for(failed, timeout=110)
        yield self.daemon.wait_for("#critical] " + failed, timeout=40)
        relay_up(urlparse(self.pebble.directory_url).port)
        renewed, _ = yield self.serve_until_renewed(leaf, time.monotonic() + 25)
        self.assertGreater(renewed.not_valid_after_utc, leaf.not_valid_after_utc)
        lines = [line for line in self.daemon.output.splitlines() if failed in line]
        self.assertGreaterEqual(len(lines), 3, self.daemon.output[-6000:])
        self.assertIn("#error] ", lines[0])
        self.assertIn("#critical] ", lines[-1])
        self.assertIn("certificate for %s renewed" % (HOST,), self.daemon.output)


class RenewalDaemonWorkersTests(RenewalDaemonTests):
    """
    Tests for renewal with ``workers: 2``: the master renews, and every
    worker serves the renewed certificate with no failed handshake.
    """

    workers = 2
    # The CA's outage and the retries are the master's alone; the renewed
    # certificate reaching the workers is the test above (each test takes
    # one to two minutes).
    test_ca_down_during_renewal = not_with_workers()
