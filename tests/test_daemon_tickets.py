"""
Tests for how many TLS 1.3 session tickets a running daemon sends, and
what it says about it at start: OpenSSL's default (two), and the
``etc/openssl/*.cnf`` files named by ``OPENSSL_CONF`` (one, none), counted
by a real client (``openssl s_client``) through the lean engine, on a
certificate's first connection (pyOpenSSL); and from its second connection
on (the own binding's shared context, kongacme.tls.openssl) and once it is
busy (a context of its own, kongacme.tls.stdlib): one, or none with
``session_tickets: false``, without any OpenSSL configuration, on either
engine.
"""

from __future__ import annotations

import os
import select
import ssl
import subprocess
import time

from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from kongacme.tls import openssl
from kongacme.tls.context import PROMOTE_AFTER
from tests.daemonproc import REPO, ShowsDaemonOutput
from tests.test_daemon import static_daemon
from tests.tlsclients import handshake_blocking


def tickets_received(port: int) -> int:
    """
    Session tickets ``openssl s_client`` reads in one TLS 1.3 connection,
    up to the upstream's answer to a request (and a moment after it).
    """
    client = subprocess.Popen(
        ["openssl", "s_client", "-connect", "127.0.0.1:%d" % port, "-servername", "static.test", "-tls1_3"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        assert client.stdin is not None and client.stdout is not None
        client.stdin.write(b"ping\n")
        client.stdin.flush()
        output = b""
        deadline = time.monotonic() + 30
        answered = None
        while time.monotonic() < deadline:
            if answered is not None and time.monotonic() > answered + 0.5:
                break
            if select.select([client.stdout], [], [], 0.1)[0]:
                chunk = os.read(client.stdout.fileno(), 65536)
                if not chunk:
                    break
                output += chunk
                if answered is None and b"A:ping" in output:
                    answered = time.monotonic()
        if answered is None:
            raise AssertionError("no answer from the upstream:\n" + output.decode(errors="replace"))
        # Its end of input ends it, and its buffered lines (the tickets'
        # among them) come out as it exits.
        client.stdin.close()
        while time.monotonic() < deadline and select.select([client.stdout], [], [], 1.0)[0]:
            chunk = os.read(client.stdout.fileno(), 65536)
            if not chunk:
                break
            output += chunk
        return output.decode(errors="replace").count("Post-Handshake New Session Ticket arrived")
    finally:
        client.kill()
        client.wait()


def make_busy(port: int, connections: int = PROMOTE_AFTER) -> None:
    """Enough connections for ``static.test`` to be a busy certificate (a context of its own)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    for _ in range(connections):
        handshake_blocking(port, "static.test", context, b"x")


#: Why the shared-context tests are skipped, or None.
NO_OWN_BINDING = None if openssl.compiled is not None else "kongacme.tls._openssl is not built"


class SessionTicketCountTests(ShowsDaemonOutput, TestCase):
    """
    Tests for the session tickets a daemon sends per full TLS 1.3
    handshake, and its line about them at start.
    """

    timeout = 120

    @inlineCallbacks
    def start(self, session_tickets: bool = True, openssl_conf: str | None = None, engine: str = "lean"):
        daemon = static_daemon(self, engine=engine, tls={"session_tickets": session_tickets})
        if openssl_conf is not None:
            daemon.env["OPENSSL_CONF"] = os.path.join(REPO, "etc", "openssl", openssl_conf)
        yield daemon.start(self.tls_port)
        yield daemon.wait_for(" started: ")
        return daemon

    @inlineCallbacks
    def test_default_two(self):
        """By default OpenSSL sends two tickets, and the daemon says so."""
        daemon = yield self.start()
        self.assertIn("TLS 1.3: 2 session ticket(s) per full handshake on pyOpenSSL", daemon.output)
        self.assertEqual((yield deferToThread(tickets_received, self.tls_port)), 2)

    @inlineCallbacks
    def test_one_ticket(self):
        """With OPENSSL_CONF=etc/openssl/one-ticket.cnf a handshake sends one ticket, and the daemon says so."""
        daemon = yield self.start(openssl_conf="one-ticket.cnf")
        self.assertIn("TLS 1.3: 1 session ticket(s) per full handshake on pyOpenSSL", daemon.output)
        self.assertEqual((yield deferToThread(tickets_received, self.tls_port)), 1)

    @inlineCallbacks
    def test_off_yet_sent(self):
        """
        tls.session_tickets: false alone still sends OpenSSL's two
        (stateful) tickets: the daemon warns at start and names the fix.
        """
        daemon = yield self.start(session_tickets=False)
        self.assertIn("tls.session_tickets is false, yet a TLS 1.3 handshake on pyOpenSSL sends 2 session ticket(s)",
                      daemon.output)
        self.assertIn("OPENSSL_CONF=etc/openssl/no-tickets.cnf", daemon.output)
        self.assertEqual((yield deferToThread(tickets_received, self.tls_port)), 2)

    @inlineCallbacks
    def test_off(self):
        """tls.session_tickets: false with OPENSSL_CONF=etc/openssl/no-tickets.cnf: no ticket, no warning."""
        daemon = yield self.start(session_tickets=False, openssl_conf="no-tickets.cnf")
        self.assertIn("TLS 1.3: 0 session ticket(s) per full handshake on pyOpenSSL", daemon.output)
        self.assertNotIn("tls.session_tickets is false, yet", daemon.output)
        self.assertEqual((yield deferToThread(tickets_received, self.tls_port)), 0)

    @inlineCallbacks
    def test_busy_certificate_one(self):
        """
        A busy certificate's handshakes send one ticket, with no OpenSSL
        configuration: its context is the standard library's, which sets
        the count.
        """
        daemon = yield self.start()
        self.assertIn("per full handshake on pyOpenSSL (OpenSSL's NumTickets; OPENSSL_CONF=etc/openssl/one-ticket.cnf "
                      "sends one); %s: 1" % (self.busy_words(),), daemon.output)
        yield deferToThread(make_busy, self.tls_port)
        self.assertEqual((yield deferToThread(tickets_received, self.tls_port)), 1)

    @inlineCallbacks
    def test_busy_certificate_off(self):
        """With tls.session_tickets: false, a busy certificate's handshakes send no ticket at all."""
        daemon = yield self.start(session_tickets=False)
        self.assertIn("(OPENSSL_CONF=etc/openssl/no-tickets.cnf); %s: 0" % (self.busy_words(),), daemon.output)
        yield deferToThread(make_busy, self.tls_port)
        self.assertEqual((yield deferToThread(tickets_received, self.tls_port)), 0)

    def busy_words(self) -> str:
        """What the line at start calls the connections on a binding kongacme sets the count of."""
        if openssl.compiled is not None:
            return "from a certificate's second connection on"
        return "a busy certificate's"

    @inlineCallbacks
    def test_second_connection_one(self):
        """
        From a certificate's second connection on (the own binding's shared
        context), one ticket per handshake; its first (pyOpenSSL) sends
        OpenSSL's two.
        """
        yield self.start()
        self.assertEqual((yield deferToThread(tickets_received, self.tls_port)), 2)
        self.assertEqual((yield deferToThread(tickets_received, self.tls_port)), 1)

    test_second_connection_one.skip = NO_OWN_BINDING  # type: ignore[attr-defined]

    @inlineCallbacks
    def test_second_connection_off(self, engine="lean"):
        """With tls.session_tickets: false, none from a certificate's second connection on."""
        yield self.start(session_tickets=False, engine=engine)
        yield deferToThread(make_busy, self.tls_port, 1)
        self.assertEqual((yield deferToThread(tickets_received, self.tls_port)), 0)

    test_second_connection_off.skip = NO_OWN_BINDING  # type: ignore[attr-defined]

    def test_second_connection_off_twisted_engine(self):
        """The same on the Twisted path (listen.engine: twisted)."""
        return self.test_second_connection_off(engine="twisted")

    test_second_connection_off_twisted_engine.skip = NO_OWN_BINDING  # type: ignore[attr-defined]

    @inlineCallbacks
    def test_busy_certificate_one_twisted_engine(self):
        """The same on the Twisted path (listen.engine: twisted): one ticket for a busy certificate."""
        yield self.start(engine="twisted")
        yield deferToThread(make_busy, self.tls_port)
        self.assertEqual((yield deferToThread(tickets_received, self.tls_port)), 1)
