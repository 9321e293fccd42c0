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
