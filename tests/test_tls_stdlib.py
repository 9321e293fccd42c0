"""
Tests for kongacme.tls.stdlib and kongacme.tls.session: a busy
certificate's sessions on the standard library's ssl, handshaken in memory
with a standard-library client (the lean engine's tests run the same
sessions over real sockets: tests/test_engine_lean.py, *StdlibTests).
"""

from __future__ import annotations

import gc
import ssl
from typing import Any

from twisted.internet.task import Clock
from twisted.logger import LogLevel
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from kongacme.testing import TestCA
from kongacme.tls.context import INTERMEDIATE_TLS12_CIPHERS, PROMOTE_AFTER, ContextBuilder
from kongacme.tls.protocol import describe_tls_failure
from kongacme.tls.records import count_records
from kongacme.tls.session import TLS_ERROR, WANT_READ, PyOpenSSLSession, StdSession
from kongacme.tls.stdlib import std_context
from tests.proxyhelpers import LogCapture

ROOT = TestCA.create()
CA = ROOT.intermediate()
CERTIFIED = CA.issue(["a.test"], include_ca=True)
H2 = (b"h2", b"http/1.1")


class Owner:
    """The app data of a pyOpenSSL session (the relay, in the engine)."""

    alpn_allowed = H2


def client_context(alpn: list[str] | None = None, maximum: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3,
                   ciphers: str | None = None) -> ssl.SSLContext:
    """A standard-library client context trusting the tests' root."""
    context = ssl.create_default_context(cadata=ROOT.ca_pem().decode("ascii"))
    context.maximum_version = maximum
    if alpn:
        context.set_alpn_protocols(alpn)
    if ciphers:
        context.set_ciphers(ciphers)
    return context


def client(alpn: list[str] | None = None, maximum: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3,
           ciphers: str | None = None, name: str = "a.test", resume: ssl.SSLSession | None = None,
           context: ssl.SSLContext | None = None) -> tuple[ssl.SSLObject, ssl.MemoryBIO, ssl.MemoryBIO]:
    """
    A verifying standard-library client for ``name`` over memory BIOs, on
    ``context`` (else a :func:`client_context` of the other arguments),
    offering to ``resume`` a session (which needs the context it came from).
    """
    context = context or client_context(alpn, maximum, ciphers)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    return context.wrap_bio(incoming, outgoing, server_hostname=name, session=resume), incoming, outgoing


def take_all(session: StdSession | PyOpenSSLSession) -> bytes:
    return session.take(1 << 20)


def handshake(session: StdSession | PyOpenSSLSession, obj: ssl.SSLObject, incoming: ssl.MemoryBIO,
              outgoing: ssl.MemoryBIO) -> bytes:
    """
    Run the handshake to its end on both sides; what the server wrote
    after the client's Finished (its session tickets).
    """
    client_done = server_done = False
    for _ in range(6):
        if not client_done:
            try:
                obj.do_handshake()
                client_done = True
            except ssl.SSLWantReadError:
                pass
        session.feed(outgoing.read())
        if not server_done:
            try:
                session.do_handshake()
                server_done = True
            except WANT_READ:
                pass
        written = take_all(session)
        if client_done and server_done:
            return written
        incoming.write(written)
    raise AssertionError("the handshake did not finish")


def context_of(session: object) -> object:
    """The context a busy certificate's session is on (either binding)."""
    return session.tls.context if isinstance(session, StdSession) else session.context  # type: ignore[attr-defined]


class SessionForTests(SynchronousTestCase):
    """
    Tests for ContextBuilder.session_for and StdContexts, on the standard
    library's binding (tests/test_tls_openssl.py runs them on the own one).
    """

    binding = "stdlib"
    busy: type = StdSession

    def setUp(self) -> None:
        self.clock = Clock()
        self.builder = ContextBuilder(self.clock)
        self.builder.std.binding = self.binding

    def test_promoted_after_its_connections(self) -> None:
        """
        A certificate's first connections are pyOpenSSL's, on the shared
        context; from its PROMOTE_AFTER-th, the standard library's, all on
        one context of its own.
        """
        kinds = [type(self.builder.session_for(CERTIFIED, H2, Owner())) for _ in range(PROMOTE_AFTER + 2)]
        self.assertEqual(kinds, [PyOpenSSLSession] * (PROMOTE_AFTER - 1) + [self.busy] * 3)
        self.assertEqual(len(self.builder.std), 1)
        contexts = {context_of(self.builder.session_for(CERTIFIED, H2, None)) for _ in range(3)}
        self.assertEqual(len(contexts), 1)
        # The pyOpenSSL ones did not make a hot pyOpenSSL context of their own.
        self.assertEqual(self.builder.hot_contexts(), 0)

    def test_tls12_stays_on_pyopenssl(self) -> None:
        """
        A client not offering TLS 1.3 gets pyOpenSSL even for a busy
        certificate (the standard library's contexts would cache its
        session), and is not counted towards the promotion.
        """
        self.builder.std.promote_after = 2
        kinds = [type(self.builder.session_for(CERTIFIED, H2, Owner(), tls13=False)) for _ in range(4)]
        self.assertEqual(kinds, [PyOpenSSLSession] * 4)
        self.assertEqual(len(self.builder.std), 0)
        self.builder.session_for(CERTIFIED, H2, Owner())
        self.assertIsInstance(self.builder.session_for(CERTIFIED, H2, Owner()), self.busy)
        self.assertIsInstance(self.builder.session_for(CERTIFIED, H2, Owner(), tls13=False), PyOpenSSLSession)

    def test_alpn_lists_apart(self) -> None:
        """Each ALPN list of a certificate has its own count and context."""
        self.builder.std.promote_after = 2
        sessions = [self.builder.session_for(CERTIFIED, alpn, Owner()) for alpn in (H2, (), H2, ())]
        self.assertEqual([type(s) for s in sessions], [PyOpenSSLSession, PyOpenSSLSession, self.busy, self.busy])
        self.assertIsNot(context_of(sessions[2]), context_of(sessions[3]))
        self.assertEqual(len(self.builder.std), 2)

    def test_rotated(self) -> None:
        """A context older than ticket_key_rotation is built anew (new ticket keys)."""
        self.builder.std.promote_after = 1
        first = context_of(self.builder.session_for(CERTIFIED, H2, None))
        self.clock.advance(self.builder.ticket_key_rotation - 1)
        self.assertIs(context_of(self.builder.session_for(CERTIFIED, H2, None)), first)
        self.clock.advance(2)
        self.assertIsNot(context_of(self.builder.session_for(CERTIFIED, H2, None)), first)
        self.assertEqual(len(self.builder.std), 1)

    def test_least_recently_used_out(self) -> None:
        """At most ``limit`` contexts; the least recently used goes first."""
        self.builder.std.promote_after = 1
        self.builder.std.limit = 2
        certs = [CA.issue(["%s.test" % n], include_ca=True) for n in "xyz"]
        first = context_of(self.builder.session_for(certs[0], H2, None))
        self.builder.session_for(certs[1], H2, None)
        self.builder.session_for(certs[0], H2, None)  # x used last: y goes
        self.builder.session_for(certs[2], H2, None)
        self.assertEqual(len(self.builder.std), 2)
        self.assertIs(context_of(self.builder.session_for(certs[0], H2, None)), first)

    def test_gone_with_its_certificate(self) -> None:
        """A certificate no longer held takes its context with it."""
        self.builder.std.promote_after = 1
        certified = CA.issue(["gone.test"], include_ca=True)
        self.builder.session_for(certified, H2, None)
        self.assertEqual(len(self.builder.std), 1)
        del certified
        gc.collect()
        self.assertEqual(len(self.builder.std), 0)

    def test_forget_all(self) -> None:
        """Changed settings (forget_all) drop the contexts and the counts."""
        self.builder.std.promote_after = 2
        self.builder.session_for(CERTIFIED, H2, Owner())
        self.builder.session_for(CERTIFIED, H2, Owner())
        self.builder.forget_all()
        self.assertEqual(len(self.builder.std), 0)
        self.assertIsInstance(self.builder.session_for(CERTIFIED, H2, Owner()), PyOpenSSLSession)

    def test_limit_zero_stays_on_pyopenssl(self) -> None:
        """With no room for contexts, every session is pyOpenSSL's."""
        self.builder.std.limit = 0
        kinds = {type(self.builder.session_for(CERTIFIED, H2, Owner())) for _ in range(2 * PROMOTE_AFTER)}
        self.assertEqual(kinds, {PyOpenSSLSession})

    def test_refused_stays_on_pyopenssl(self) -> None:
        """
        A certificate the binding refuses (here: an ALPN name longer than
        255 bytes) stays on pyOpenSSL, with one warning, and is not tried
        again.
        """
        logs = LogCapture("kongacme.tls.stdlib").start(self)
        self.builder.std.promote_after = 1
        odd = (b"x" * 256,)
        kinds = [type(self.builder.session_for(CERTIFIED, odd, Owner())) for _ in range(3)]
        self.assertEqual(kinds, [PyOpenSSLSession] * 3)
        warnings = [e["log_format"] for e in logs.events if e["log_level"] == LogLevel.warn]
        self.assertEqual(len(warnings), 1)
        self.assertIn("stays on pyOpenSSL", warnings[0])

    def test_not_ascii_alpn(self) -> None:
        """The standard library refuses an ALPN name that is not ASCII (the own binding takes any bytes)."""
        self.builder.std.promote_after = 1
        kinds = {type(self.builder.session_for(CERTIFIED, (b"\xffodd",), Owner())) for _ in range(2)}
        self.assertEqual(kinds, {PyOpenSSLSession})


class StdSessionTests(SynchronousTestCase):
    """
    Handshakes with a standard-library session, in memory
    (tests/test_tls_openssl.py runs them on the own binding's).
    """

    def session(self, session_tickets: bool = True, alpn: tuple[bytes, ...] = H2) -> Any:
        builder = ContextBuilder(Clock(), session_tickets=session_tickets)
        return StdSession(std_context(builder.served(CERTIFIED), alpn, session_tickets))

    def test_verified_chain_and_data(self) -> None:
        """
        A verifying client gets the leaf and its intermediate (it trusts
        only the root), and data passes both ways.
        """
        session = self.session()
        obj, incoming, outgoing = client()
        incoming.write(handshake(session, obj, incoming, outgoing))  # the ticket
        self.assertEqual(obj.version(), "TLSv1.3")
        self.assertTrue(session.is_tls13())
        obj.write(b"ping")
        session.feed(outgoing.read())
        self.assertEqual(session.read(100), b"ping")
        records, more = session.seal(b"pong" * 10000)
        self.assertFalse(more)
        incoming.write(records)
        received = b""
        while len(received) < 40000:
            received += obj.read(65536)
        self.assertEqual(received, b"pong" * 10000)

    def test_one_ticket(self) -> None:
        """With session tickets on, a TLS 1.3 handshake sends one ticket (OpenSSL's default is two)."""
        obj, incoming, outgoing = client()
        after = handshake(self.session(), obj, incoming, outgoing)
        self.assertEqual(count_records(0, b"", after)[0], 1)

    def test_no_tickets(self) -> None:
        """With session tickets off, none at all (pyOpenSSL still sends two stateful ones)."""
        obj, incoming, outgoing = client()
        after = handshake(self.session(session_tickets=False), obj, incoming, outgoing)
        self.assertEqual(after, b"")

    def test_tls13_sessions_not_cached(self) -> None:
        """
        OpenSSL's server session cache (on in every standard-library
        context) keeps no TLS 1.3 session, with tickets on or off, even for
        connections closed cleanly: why only TLS 1.3 clients come here. (A
        TLS 1.2 session without a ticket would be kept: shown last.)
        """
        for tickets, version, kept in ((True, ssl.TLSVersion.TLSv1_3, 0), (False, ssl.TLSVersion.TLSv1_3, 0),
                                       (False, ssl.TLSVersion.TLSv1_2, 5)):
            builder = ContextBuilder(Clock(), session_tickets=tickets)
            context = std_context(builder.served(CERTIFIED), H2, tickets)
            sessions = []
            for _ in range(5):
                session = StdSession(context)
                obj, incoming, outgoing = client(maximum=version)
                handshake(session, obj, incoming, outgoing)
                session.close_notify()
                sessions.append(session)
            self.assertEqual(context.session_stats()["number"], kept, (tickets, version))

    def test_alpn_server_order(self) -> None:
        """The route's first protocol the client offers; none (no alert) when they share none."""
        for offered, expected in ((["http/1.1", "h2"], "h2"), (["http/1.1"], "http/1.1"), (["x"], None)):
            session = self.session()
            obj, incoming, outgoing = client(alpn=offered)
            handshake(session, obj, incoming, outgoing)
            self.assertEqual(obj.selected_alpn_protocol(), expected)
            self.assertEqual(session.alpn(), expected.encode("ascii") if expected else None)

    def test_tls12_intermediate_suites(self) -> None:
        """
        A TLS 1.2 client gets a forward-secret AEAD suite; one offering only
        CBC suites fails the handshake, described as OpenSSL words it.
        """
        session = self.session()
        obj, incoming, outgoing = client(maximum=ssl.TLSVersion.TLSv1_2)
        handshake(session, obj, incoming, outgoing)
        self.assertFalse(session.is_tls13())
        self.assertIn(obj.cipher()[0].encode("ascii"), INTERMEDIATE_TLS12_CIPHERS.split(b":"))
        session = self.session()
        obj, incoming, outgoing = client(maximum=ssl.TLSVersion.TLSv1_2, ciphers="ECDHE-ECDSA-AES128-SHA")
        try:
            obj.do_handshake()
        except ssl.SSLWantReadError:
            pass
        session.feed(outgoing.read())
        try:
            session.do_handshake()
        except TLS_ERROR:
            reason = describe_tls_failure(Failure())
        else:
            self.fail("the handshake did not fail")
        self.assertEqual(reason, "no shared cipher")

    def test_close_notify_both_ways(self) -> None:
        """
        The client's close_notify reads as the end (``b""``), and ours
        reaches the client as its own end.
        """
        session = self.session()
        obj, incoming, outgoing = client()
        incoming.write(handshake(session, obj, incoming, outgoing))  # the ticket
        try:
            obj.unwrap()
        except ssl.SSLWantReadError:
            pass
        session.feed(outgoing.read())
        self.assertEqual(session.read(100), b"")
        session.close_notify()
        incoming.write(take_all(session))
        obj.unwrap()  # the server's close_notify completes the client's shutdown
