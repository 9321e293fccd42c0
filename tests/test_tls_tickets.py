"""
Tests for kongacme.tls.tickets (the process's OpenSSL configuration sets
the count; tests/test_daemon_tickets.py runs daemons with each
``etc/openssl/*.cnf``).
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from kongacme.testing import TestCA
from kongacme.tls.context import ContextBuilder
from kongacme.tls import tickets
from kongacme.tls.tickets import tickets_per_handshake


class TicketsPerHandshakeTests(SynchronousTestCase):
    """Tests for tickets_per_handshake."""

    def test_openssl_default(self):
        """
        Without an OpenSSL configuration, a handshake sends OpenSSL's two
        tickets, with session_tickets on or off (then stateful ones); the
        count leaves the builder's contexts as they were.
        """
        certified = TestCA.create().intermediate().issue(["a.test"], include_ca=True)
        for on in (True, False):
            builder = ContextBuilder(Clock(), session_tickets=on)
            self.assertEqual(tickets_per_handshake(builder, certified), 2)
            self.assertEqual((builder.contexts(), builder.hot_contexts()), (0, 0))


class PyOpenSSLTicketsTests(SynchronousTestCase):
    """Tests for pyopenssl_tickets, the process's count, counted once."""

    def setUp(self):
        self.patch(tickets, "_counted", None)

    def counted_on(self) -> list:
        """The certificates tickets_per_handshake is called with from now on."""
        calls: list = []
        real = tickets.tickets_per_handshake

        def counting(builder, certified):
            calls.append(certified)
            return real(builder, certified)

        self.patch(tickets, "tickets_per_handshake", counting)
        return calls

    def test_counted_once(self):
        """OpenSSL's two without a configuration, counted on the first call only."""
        calls = self.counted_on()
        self.assertEqual((tickets.pyopenssl_tickets(), tickets.pyopenssl_tickets()), (2, 2))
        self.assertEqual(len(calls), 1)

    def test_on_the_certificate_given(self):
        """The first call's certificate (the daemon's fallback) is the one counted on; later ones are not used."""
        calls = self.counted_on()
        ca = TestCA.create().intermediate()
        given, later = (ca.issue([name], include_ca=True) for name in ("a.test", "b.test"))
        self.assertEqual((tickets.pyopenssl_tickets(given), tickets.pyopenssl_tickets(later)), (2, 2))
        self.assertEqual(calls, [given])

    def test_cannot_count(self):
        """A count that fails is -1 (never the count configured), logged once, and is not tried again."""
        calls = []

        def failing(builder, certified):
            calls.append(certified)
            raise RuntimeError("the in-memory TLS 1.3 handshake did not finish")

        self.patch(tickets, "tickets_per_handshake", failing)
        self.assertEqual((tickets.pyopenssl_tickets(), tickets.pyopenssl_tickets()), (-1, -1))
        self.assertEqual(len(calls), 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
