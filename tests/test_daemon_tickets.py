"""
Tests for how many TLS 1.3 session tickets a running daemon sends, and
what it says about it at start, counted by a real client (``openssl
s_client``) through the lean engine and the Twisted path: where kongacme's
own OpenSSL binding is built, one from a certificate's first connection
on, or none with ``session_tickets: false``, without any OpenSSL
configuration; where it is not (a daemon whose import of it fails),
OpenSSL's default (two) on pyOpenSSL, or what the ``etc/openssl/*.cnf``
file named by ``OPENSSL_CONF`` says (one, none), and a busy certificate's
one on the standard library's ``ssl``.
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


#: A ``sitecustomize`` making ``import kongacme.tls._openssl`` fail, as where
#: the extension is not built.
_NOT_BUILT = """
import importlib.abc, sys

class _NotBuilt(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "kongacme.tls._openssl":
            raise ImportError("kongacme.tls._openssl: not built (tests/test_daemon_tickets.py)")
        return None

sys.meta_path.insert(0, _NotBuilt())
"""


class SessionTicketCountTests(ShowsDaemonOutput, TestCase):
    """
    Tests for the session tickets a daemon sends per full TLS 1.3
    handshake, and its line about them at start.
    """

    timeout = 120

    @inlineCallbacks
    def start(self, session_tickets: bool = True, openssl_conf: str | None = None, engine: str = "lean",
              built: bool = True):
        """
        A daemon serving ``static.test``; ``built=False``: as where
        kongacme's own OpenSSL binding is not built.
        """
        daemon = static_daemon(self, engine=engine, tls={"session_tickets": session_tickets})
        if openssl_conf is not None:
            daemon.env["OPENSSL_CONF"] = os.path.join(REPO, "etc", "openssl", openssl_conf)
        if not built:
            site = os.path.join(self.dir, "site")
            os.makedirs(site)
            with open(os.path.join(site, "sitecustomize.py"), "w") as f:
                f.write(_NOT_BUILT)
            daemon.env["PYTHONPATH"] = os.pathsep.join([site, REPO])
        yield daemon.start(self.tls_port)
        yield daemon.wait_for(" started: ")
        return daemon

    @inlineCallbacks
    def test_one_from_the_first_connection(self):
        """
        One ticket per handshake from a certificate's first connection on,
        with no OpenSSL configuration; the line at start says so, and what
        pyOpenSSL (where a certificate may still be) would send.
        """
        daemon = yield self.start()
        self.assertIn("TLS 1.3: 1 session ticket(s) per full handshake on kongacme's OpenSSL binding, "
                      "2 on pyOpenSSL", daemon.output)
        self.assertIn("another is on the binding too until it has had", daemon.output)
        self.assertNotIn("[kongacme.service.DaemonService#warn", daemon.output)
        self.assertEqual((yield deferToThread(tickets_received, self.tls_port)), 1)
        self.assertEqual((yield deferToThread(tickets_received, self.tls_port)), 1)
        yield deferToThread(make_busy, self.tls_port)
        self.assertEqual((yield deferToThread(tickets_received, self.tls_port)), 1)

    test_one_from_the_first_connection.skip = NO_OWN_BINDING  # type: ignore[attr-defined]

    @inlineCallbacks
    def test_off(self, engine="lean"):
        """
        With tls.session_tickets: false, none from a certificate's first
        connection on, with no OpenSSL configuration and no warning.
        """
        daemon = yield self.start(session_tickets=False, engine=engine)
        self.assertIn("TLS 1.3: 0 session ticket(s) per full handshake on kongacme's OpenSSL binding, "
                      "2 on pyOpenSSL", daemon.output)
        self.assertIn("OPENSSL_CONF=etc/openssl/no-tickets.cnf sends none", daemon.output)
        self.assertNotIn("tls.session_tickets is false, yet", daemon.output)
        self.assertEqual((yield deferToThread(tickets_received, self.tls_port)), 0)
        self.assertEqual((yield deferToThread(tickets_received, self.tls_port)), 0)
        yield deferToThread(make_busy, self.tls_port)
        self.assertEqual((yield deferToThread(tickets_received, self.tls_port)), 0)

    test_off.skip = NO_OWN_BINDING  # type: ignore[attr-defined]

    def test_off_twisted_engine(self):
        """The same on the Twisted path (listen.engine: twisted)."""
        return self.test_off(engine="twisted")

    test_off_twisted_engine.skip = NO_OWN_BINDING  # type: ignore[attr-defined]

    @inlineCallbacks
    def test_pyopenssl_count_from_openssl_conf(self):
        """
        The line's pyOpenSSL count is OPENSSL_CONF's: one with
        one-ticket.cnf, which lets certificates not kept yet (the limit
        reached) stay there.
        """
        daemon = yield self.start(openssl_conf="one-ticket.cnf")
        self.assertIn("on kongacme's OpenSSL binding, 1 on pyOpenSSL", daemon.output)
        self.assertIn("another stays there too until it has had", daemon.output)
        self.assertEqual((yield deferToThread(tickets_received, self.tls_port)), 1)

    test_pyopenssl_count_from_openssl_conf.skip = NO_OWN_BINDING  # type: ignore[attr-defined]

    # -- where the own binding is not built ---------------------------------

    @inlineCallbacks
    def test_not_built_default_two(self):
        """Not built: OpenSSL's two tickets on pyOpenSSL, and the daemon says so."""
        daemon = yield self.start(built=False)
        self.assertIn("TLS 1.3: 2 session ticket(s) per full handshake on pyOpenSSL", daemon.output)
        self.assertEqual((yield deferToThread(tickets_received, self.tls_port)), 2)

    @inlineCallbacks
    def test_not_built_one_ticket(self):
        """Not built, OPENSSL_CONF=etc/openssl/one-ticket.cnf: one ticket, and the daemon says so."""
        daemon = yield self.start(openssl_conf="one-ticket.cnf", built=False)
        self.assertIn("TLS 1.3: 1 session ticket(s) per full handshake on pyOpenSSL", daemon.output)
        self.assertEqual((yield deferToThread(tickets_received, self.tls_port)), 1)

    @inlineCallbacks
    def test_not_built_off_yet_sent(self):
        """
        Not built, tls.session_tickets: false alone still sends OpenSSL's
        two (stateful) tickets: the daemon warns at start and names the fix.
        """
        daemon = yield self.start(session_tickets=False, built=False)
        self.assertIn("tls.session_tickets is false, yet a TLS 1.3 handshake on pyOpenSSL sends 2 session ticket(s)",
                      daemon.output)
        self.assertIn("OPENSSL_CONF=etc/openssl/no-tickets.cnf", daemon.output)
        self.assertEqual((yield deferToThread(tickets_received, self.tls_port)), 2)

    @inlineCallbacks
    def test_not_built_off(self):
        """Not built, tls.session_tickets: false with OPENSSL_CONF=etc/openssl/no-tickets.cnf: none, no warning."""
        daemon = yield self.start(session_tickets=False, openssl_conf="no-tickets.cnf", built=False)
        self.assertIn("TLS 1.3: 0 session ticket(s) per full handshake on pyOpenSSL", daemon.output)
        self.assertNotIn("tls.session_tickets is false, yet", daemon.output)
        self.assertEqual((yield deferToThread(tickets_received, self.tls_port)), 0)

    @inlineCallbacks
    def test_not_built_busy_certificate(self, engine="lean"):
        """
        Not built, a busy certificate's handshakes send one ticket, or
        none with tls.session_tickets: false, with no OpenSSL
        configuration: its context is the standard library's, which sets
        the count.
        """
        daemon = yield self.start(engine=engine, built=False)
        self.assertIn("on pyOpenSSL (OpenSSL's NumTickets: OPENSSL_CONF=etc/openssl/one-ticket.cnf sends one); "
                      "a busy certificate's: 1", daemon.output)
        yield deferToThread(make_busy, self.tls_port)
        self.assertEqual((yield deferToThread(tickets_received, self.tls_port)), 1)

    def test_not_built_busy_certificate_twisted_engine(self):
        """The same on the Twisted path (listen.engine: twisted)."""
        return self.test_not_built_busy_certificate(engine="twisted")

    @inlineCallbacks
    def test_not_built_busy_certificate_off(self):
        """Not built, with tls.session_tickets: false, a busy certificate's handshakes send no ticket at all."""
        daemon = yield self.start(session_tickets=False, built=False)
        self.assertIn("(OPENSSL_CONF=etc/openssl/no-tickets.cnf); a busy certificate's: 0", daemon.output)
        yield deferToThread(make_busy, self.tls_port)
        self.assertEqual((yield deferToThread(tickets_received, self.tls_port)), 0)
