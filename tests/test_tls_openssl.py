"""
Tests for kongacme.tls.openssl and its compiled binding
(kongacme/tls/_openssl.c): the standard library's session tests and
ContextBuilder.session_for's, run again on the own binding, and what only
it does (TLS 1.2 clients, the pyOpenSSL contexts' groups and suites, no
session cache, its arguments and failures). The lean engine's and the TLS
pump's tests run it over real sockets (*OpenSSLTests), with the compiled
steady state calling it through its C API (tests/test_engine_steady.py).
"""

from __future__ import annotations

import gc
import ssl
from typing import Any

from cryptography.hazmat.primitives import serialization
from hypothesis import given, settings
from hypothesis import strategies as st
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from kongacme.tls import openssl
from kongacme.tls.context import (
    INTERMEDIATE_CURVES,
    INTERMEDIATE_TLS12_CIPHERS,
    INTERMEDIATE_TLS13_CIPHERSUITES,
    ContextBuilder,
)
from kongacme.tls.openssl import openssl_context, pem
from kongacme.tls.records import count_records
from kongacme.tls.session import CLOSED, TLS_ERROR, WANT_READ, PyOpenSSLSession, tls_failure_reason
from tests import test_tls_stdlib as stdlib_tests
from tests.test_tls_stdlib import CERTIFIED, H2, Owner, client, handshake

if openssl.compiled is None:
    skip = "kongacme.tls._openssl is not built"
    Session: Any = None
    Context: Any = None
else:
    Session = openssl.compiled.Session
    Context = openssl.compiled.Context


def served() -> Any:
    return ContextBuilder(Clock()).served(CERTIFIED)


def context(alpn: tuple[bytes, ...] = H2, session_tickets: bool = True) -> Any:
    return openssl_context(served(), alpn, session_tickets)


#: One context for the hypothesis tests (building one per example is slow).
SHARED: Any = context() if Context is not None else None


def established(session: Any = None, **kwargs: Any) -> tuple[Any, ssl.SSLObject, ssl.MemoryBIO, ssl.MemoryBIO]:
    """A session handshaken with a standard-library client, the tickets delivered."""
    session = session if session is not None else Session(context())
    obj, incoming, outgoing = client(**kwargs)
    incoming.write(handshake(session, obj, incoming, outgoing))
    return session, obj, incoming, outgoing


class SessionForOpenSSLTests(stdlib_tests.SessionForTests):
    """
    ContextBuilder.session_for and StdContexts on the own binding: the busy
    certificates' contexts (the shared contexts before them are
    :class:`SharedSessionForTests`', turned off here so that the suite's
    pyOpenSSL-until-busy counts hold).
    """

    binding = "openssl"
    busy = Session

    def setUp(self) -> None:
        super().setUp()
        self.builder.std.certificate_limit = 0

    def test_tls12_stays_on_pyopenssl(self) -> None:
        """
        A client not offering TLS 1.3 comes to the own binding too (its
        contexts keep no session cache), counted towards the promotion.
        """
        self.builder.std.promote_after = 2
        kinds = [type(self.builder.session_for(CERTIFIED, H2, Owner(), tls13=False)) for _ in range(3)]
        self.assertEqual(kinds, [PyOpenSSLSession, Session, Session])
        self.assertTrue(self.builder.std.tls12)

    def test_not_ascii_alpn(self) -> None:
        """An ALPN name that is not ASCII is taken (ALPN names are bytes: RFC 7301 §3.1)."""
        self.builder.std.promote_after = 1
        session = self.builder.session_for(CERTIFIED, (b"\xffodd",), Owner())
        self.assertIsInstance(session, Session)

    def test_default_binding(self) -> None:
        """Where it is built, the own binding is what busy certificates get, unless told otherwise."""
        builder = ContextBuilder(Clock())
        self.assertEqual(builder.std.binding, "openssl")
        builder.std.promote_after = 1
        self.assertIsInstance(builder.session_for(CERTIFIED, H2, Owner()), Session)
        builder.std.binding = "stdlib"
        self.assertEqual(len(builder.std), 0)  # its contexts went
        self.assertFalse(builder.std.tls12)
        self.assertRaises(ValueError, setattr, builder.std, "binding", "gnutls")


class OpenSSLSessionTests(stdlib_tests.StdSessionTests):
    """The standard library's session tests, and more, on the own binding's session."""

    def session(self, session_tickets: bool = True, alpn: tuple[bytes, ...] = H2) -> Any:
        return Session(context(alpn, session_tickets))

    def test_tls13_sessions_not_cached(self) -> None:
        """
        No session is kept on the server, TLS 1.2 ones included (the
        standard library's contexts keep those): stateless tickets only.
        """
        for tickets in (True, False):
            for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
                shared = context(session_tickets=tickets)
                for _ in range(5):
                    session = Session(shared)
                    established(session, maximum=version)
                    session.close_notify()
                self.assertEqual(shared.sessions_cached(), 0, (tickets, version))

    def test_resumed_with_ticket(self) -> None:
        """A client's ticket resumes its session on the same context, TLS 1.3 and 1.2."""
        for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
            shared = context()
            client_context = stdlib_tests.client_context(maximum=version)
            first = Session(shared)
            obj, incoming, outgoing = client(context=client_context)
            incoming.write(handshake(first, obj, incoming, outgoing))
            obj.write(b"x")  # reads the TLS 1.3 ticket
            try:
                obj.read(1)
            except ssl.SSLWantReadError:
                pass
            ticket = obj.session
            self.assertIsNotNone(ticket)
            second = Session(shared)
            obj, incoming, outgoing = client(resume=ticket, context=client_context)
            handshake(second, obj, incoming, outgoing)
            self.assertTrue(second.session_reused(), version)
            self.assertTrue(obj.session_reused, version)
            self.assertFalse(first.session_reused())

    def test_pyopenssl_profile(self) -> None:
        """
        The pyOpenSSL contexts' profile, which the standard library's
        cannot set: their TLS 1.3 suites and groups (X25519 first; a client
        offering only X448 fails).
        """
        session, obj, _, _ = established()
        self.assertEqual(session.version(), "TLSv1.3")
        self.assertIn(session.cipher().encode("ascii"), INTERMEDIATE_TLS13_CIPHERSUITES.split(b":"))
        self.assertEqual(obj.cipher()[0], session.cipher())
        # A TLS 1.2 client gets one of the TLS 1.2 suites.
        session, obj, _, _ = established(maximum=ssl.TLSVersion.TLSv1_2)
        self.assertEqual(session.version(), "TLSv1.2")
        self.assertIn(session.cipher().encode("ascii"), INTERMEDIATE_TLS12_CIPHERS.split(b":"))
        self.assertIn(b"X25519", INTERMEDIATE_CURVES)
        self.assertNotIn(b"X448", INTERMEDIATE_CURVES)

    def test_data_in_every_shape(self) -> None:
        """
        feed takes bytes and memoryviews; read takes a size, or a buffer
        (giving the count); take a size, or all; write and seal anything
        with the buffer protocol; empty writes write nothing.
        """
        session, obj, incoming, outgoing = established()
        obj.write(b"hello")
        records = outgoing.read()
        session.feed(memoryview(records)[:3])
        self.assertRaises(ssl.SSLWantReadError, session.read, 100)
        session.feed(memoryview(records)[3:])
        buffer = bytearray(10)
        self.assertEqual(session.read(100, memoryview(buffer)), 5)
        self.assertEqual(bytes(buffer[:5]), b"hello")
        self.assertEqual(session.write(b""), 0)
        self.assertEqual(session.take(), b"")
        self.assertEqual(session.write(bytearray(b"abc")), 3)
        first = session.take(4)
        self.assertEqual(len(first), 4)
        incoming.write(first + session.take())
        self.assertEqual(obj.read(10), b"abc")
        records, more = session.seal(memoryview(b"x" * 100000))
        self.assertFalse(more)
        incoming.write(records)
        got = b""
        while len(got) < 100000:
            got += obj.read(1 << 17)
        self.assertEqual(got, b"x" * 100000)
        self.assertEqual(session.read(0), b"")
        self.assertRaises(ValueError, session.read, -1)
        self.assertRaises(TypeError, session.read)
        self.assertRaises(TypeError, session.feed, "text")
        self.assertRaises(TypeError, session.take, 1, 2)
        self.assertTrue(session.whole_writes)
        self.assertIsNone(session.release())

    def test_fin_is_the_end(self) -> None:
        """A FIN without close_notify (feed_eof) reads as the end, as in every kongacme context."""
        session, obj, incoming, outgoing = established()
        session.feed_eof()
        self.assertEqual(session.read(100), b"")
        self.assertEqual(session.read(100), b"")  # and stays so

    def test_garbage_is_a_tls_error(self) -> None:
        """Bytes that are not TLS fail the handshake as an ssl.SSLError with OpenSSL's reason."""
        session = self.session()
        session.feed(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        with self.assertRaises(ssl.SSLError) as caught:
            session.do_handshake()
        self.assertIsInstance(caught.exception, TLS_ERROR)
        self.assertNotIsInstance(caught.exception, WANT_READ)
        self.assertEqual(tls_failure_reason(caught.exception), "http request")
        self.assertEqual(caught.exception.library, "SSL")
        self.assertIn("[SSL: HTTP_REQUEST]", str(caught.exception))

    def test_corrupt_record(self) -> None:
        """A record altered on the way fails read with a TLS error (bad record MAC)."""
        session, obj, incoming, outgoing = established()
        obj.write(b"secret")
        records = bytearray(outgoing.read())
        records[-1] ^= 1
        session.feed(bytes(records))
        with self.assertRaises(ssl.SSLError) as caught:
            session.read(100)
        self.assertEqual(tls_failure_reason(caught.exception), "decryption failed or bad record mac")

    def test_close_notify_before_the_handshake(self) -> None:
        """close_notify on a session that never finished its handshake does nothing and raises nothing."""
        session = self.session()
        session.close_notify()
        self.assertEqual(session.take(), b"")
        self.assertIsNone(session.version())
        self.assertIsNone(session.alpn())

    def test_client_close_notify_then_ours(self) -> None:
        """Ours after the client's: read gives b"" (the standard library would raise CLOSED)."""
        session, obj, incoming, outgoing = established()
        try:
            obj.unwrap()
        except ssl.SSLWantReadError:
            pass
        session.feed(outgoing.read())
        session.close_notify()
        self.assertEqual(session.read(100), b"")
        self.assertTrue(issubclass(ssl.SSLZeroReturnError, CLOSED))


class ContextTests(SynchronousTestCase):
    """The own binding's contexts: what OpenSSL refuses, and the arguments."""

    def arguments(self, **changes: Any) -> dict[str, Any]:
        chain, key = pem(served())
        arguments: dict[str, Any] = dict(
            chain=chain, key=key, alpn=H2, session_tickets=True, tls12_ciphers=INTERMEDIATE_TLS12_CIPHERS,
            tls13_suites=INTERMEDIATE_TLS13_CIPHERSUITES, groups=INTERMEDIATE_CURVES,
        )
        arguments.update(changes)
        return arguments

    def refused(self, **changes: Any) -> ssl.SSLError:
        with self.assertRaises(ssl.SSLError) as caught:
            Context(**self.arguments(**changes))
        return caught.exception

    def test_key_of_another_certificate(self) -> None:
        """A key that is not the leaf's: OpenSSL's "key values mismatch"."""
        other = ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        self.assertEqual(tls_failure_reason(self.refused(key=other)), "key values mismatch")

    def test_encrypted_key_refused(self) -> None:
        """An encrypted key is refused, never asked for on a terminal."""
        _, key = pem(served())
        encrypted = serialization.load_pem_private_key(key, None).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
        self.refused(key=encrypted)

    def test_not_pem(self) -> None:
        """Garbage for the chain or the key, and a chain with a broken intermediate."""
        self.refused(chain=b"not a certificate")
        self.refused(key=b"not a key")
        self.refused(chain=b"not a certificate", key=b"")
        chain, _ = pem(served())
        cut = chain[: chain.rindex(b"-----BEGIN CERTIFICATE-----") + 40] + b"\n-----END CERTIFICATE-----\n"
        self.refused(chain=cut)

    def test_profile_refused(self) -> None:
        """A cipher list, suite list or group list OpenSSL does not know."""
        self.refused(tls12_ciphers=b"NOT-A-CIPHER")
        self.refused(tls13_suites=b"TLS_NOT_A_SUITE")
        self.refused(groups=b"not-a-curve")

    def test_alpn_arguments(self) -> None:
        """The ALPN list is a tuple of 1 to 255-byte names, at most 65535 bytes in all."""
        self.assertRaises(ValueError, Context, **self.arguments(alpn=(b"",)))
        self.assertRaises(ValueError, Context, **self.arguments(alpn=(b"x" * 256,)))
        self.assertRaises(ValueError, Context, **self.arguments(alpn=(b"x" * 255,) * 257))
        self.assertRaises(TypeError, Context, **self.arguments(alpn=("h2",)))
        self.assertRaises(TypeError, Context, **self.arguments(alpn=[b"h2"]))
        Context(**self.arguments(alpn=()))

    def test_refused_context_keeps_nothing(self) -> None:
        """A context OpenSSL refused keeps nothing half-made: no session can be made on it."""
        refused = Context.__new__(Context)
        self.assertRaises(ssl.SSLError, refused.__init__, **self.arguments(key=b"garbage"))
        self.assertRaises(ValueError, Session, refused)

    def test_initialised_once(self) -> None:
        """A context cannot be initialised twice; a session needs an initialised one."""
        shared = Context(**self.arguments())
        self.assertRaises(TypeError, shared.__init__, **self.arguments())
        self.assertRaises(ValueError, Session, Context.__new__(Context))
        self.assertRaises(TypeError, Session, object())
        self.assertRaises(TypeError, Session, shared, extra=1)

    def test_no_alpn_when_the_route_has_none(self) -> None:
        """A route with no ALPN list answers none, whatever the client offers."""
        session, obj, _, _ = established(Session(context(alpn=())), alpn=["h2"])
        self.assertIsNone(session.alpn())
        self.assertIsNone(obj.selected_alpn_protocol())

    def test_sessions_outlive_nothing(self) -> None:
        """A session keeps its context alive; both go when dropped (no cycle, no leak of the context)."""
        shared = context()
        session = Session(shared)
        self.assertIs(session.context, shared)
        before = len(gc.get_objects())
        for _ in range(200):
            established(Session(shared))
        gc.collect()
        self.assertLess(len(gc.get_objects()) - before, 50)


class HostileBytesTests(SynchronousTestCase):
    """
    Any bytes from a client, in any segments, before or after the
    handshake: the binding answers with a TLS error or "more, please"
    (the exceptions the relay handles), never anything else, and never a
    crash (the C code only moves bytes; OpenSSL parses them).
    """

    @given(st.lists(st.binary(max_size=600), max_size=6))
    @settings(max_examples=150, deadline=None)
    def test_before_the_handshake(self, segments: list[bytes]) -> None:
        session = Session(SHARED)
        for segment in segments:
            session.feed(segment)
            try:
                session.do_handshake()
            except WANT_READ:
                continue
            except TLS_ERROR:
                break
        session.take()
        session.close_notify()

    @given(st.lists(st.binary(max_size=600), min_size=1, max_size=4), st.booleans())
    @settings(max_examples=100, deadline=None)
    def test_after_the_handshake(self, segments: list[bytes], as_records: bool) -> None:
        session, obj, incoming, outgoing = established(Session(SHARED))
        for segment in segments:
            if as_records:  # well-framed application-data records, garbage inside
                segment = b"\x17\x03\x03" + len(segment).to_bytes(2, "big") + segment
            session.feed(segment)
            try:
                while session.read(1 << 14):
                    pass
                break  # b"": the end
            except WANT_READ:
                continue
            except TLS_ERROR:
                break
        session.take()



def certificate(certified: Any = CERTIFIED) -> Any:
    """``certified``'s leaf and key as the own binding's Certificate."""
    return openssl.openssl_certificate(ContextBuilder(Clock()).served(certified))


def shared(alpn: tuple[bytes, ...] = H2, session_tickets: bool = True, certified: Any = CERTIFIED) -> Any:
    """A shared context for ``certified``'s intermediates."""
    return openssl.shared_openssl_context(ContextBuilder(Clock()).served(certified).chain, alpn, session_tickets)


class SharedContextTests(SynchronousTestCase):
    """
    The own binding's shared contexts (no leaf of their own) and its
    Certificate objects: sessions on them verify, and what is refused.
    """

    def test_verified_chain(self) -> None:
        """A session bringing its certificate presents it with the shared context's intermediates (the client verifies against the root)."""
        context = shared()
        self.assertTrue(context.shared)
        self.assertFalse(openssl_context(served(), H2, True).shared)
        session, obj, incoming, outgoing = established(Session(context, certificate()), alpn=["h2"])
        self.assertEqual(session.version(), "TLSv1.3")
        self.assertEqual(obj.getpeercert()["subjectAltName"], (("DNS", "a.test"),))
        self.assertEqual(session.alpn(), b"h2")

    def test_certificates_of_one_chain_share_it(self) -> None:
        """Two certificates of the same CA on one shared context: each session presents its own."""
        other = stdlib_tests.CA.issue(["b.test"], include_ca=True)
        context = shared()
        for certified, name in ((CERTIFIED, "a.test"), (other, "b.test"), (CERTIFIED, "a.test")):
            _, obj, _, _ = established(Session(context, certificate(certified)), name=name)
            self.assertEqual(obj.getpeercert()["subjectAltName"], (("DNS", name),))

    def test_tls12(self) -> None:
        """A TLS 1.2 client on a shared context, no session cached."""
        context = shared()
        session, obj, _, _ = established(Session(context, certificate()), maximum=ssl.TLSVersion.TLSv1_2)
        self.assertEqual(session.version(), "TLSv1.2")
        self.assertEqual(context.sessions_cached(), 0)

    def test_tickets(self) -> None:
        """One ticket per TLS 1.3 handshake, or none with session_tickets off; the ticket resumes on the context."""
        for tickets, expected in ((True, 1), (False, 0)):
            obj, incoming, outgoing = client()
            after = handshake(Session(shared(session_tickets=tickets), certificate()), obj, incoming, outgoing)
            self.assertEqual(count_records(0, b"", after)[0], expected)
        context, client_context = shared(), stdlib_tests.client_context()
        _, obj, _, _ = established(Session(context, certificate()), context=client_context)
        try:
            obj.read(1)  # takes the ticket in
        except ssl.SSLWantReadError:
            pass
        again, _, _, _ = established(Session(context, certificate()), resume=obj.session, context=client_context)
        self.assertTrue(again.session_reused())

    def test_arguments(self) -> None:
        """A shared context needs a certificate, a context of its own takes none; only a Certificate is one."""
        self.assertRaises(ValueError, Session, shared())
        self.assertRaises(ValueError, Session, context(), certificate())
        self.assertRaises(TypeError, Session, shared(), b"certificate")
        self.assertRaises(TypeError, Session, shared(), openssl.compiled.Certificate.__new__(openssl.compiled.Certificate))
        self.assertRaises(TypeError, Session, shared(), certificate(), None)

    def test_certificate_refused(self) -> None:
        """Garbage, a key that is not the leaf's, and trailing bytes after the leaf: ssl.SSLError."""
        the_served = served()
        leaf = crypto_leaf(the_served)
        key = the_served.key.to_cryptography_key().private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )
        Certificate = openssl.compiled.Certificate
        self.assertIsNotNone(Certificate(leaf, key, "EC"))
        self.assertIsNotNone(Certificate(leaf, key))  # the key's type guessed
        other = ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )
        for arguments in ((b"not a certificate", key), (leaf, b"not a key"), (leaf, other, "EC"),
                          (leaf + b"\x00", key), (leaf, key, "RSA"), (leaf[:-1], key), (leaf, key + b"\x00", "EC"),
                          (leaf, key[:-1], "EC")):
            self.assertRaises(ssl.SSLError, Certificate, *arguments)
        made = Certificate(leaf, key)
        self.assertRaises(TypeError, made.__init__, leaf, key)


    def test_rsa_certificate(self) -> None:
        """
        An RSA leaf and key (traditional DER, decoded by RSA's own
        decoder) on a shared context: the session presents the leaf, TLS
        1.3 and 1.2 alike; the key of another RSA leaf is refused.
        """
        rsa_certified = stdlib_tests.CA.issue(["rsa.test"], key_type="rsa", include_ca=True)
        made = certificate(rsa_certified)
        for maximum in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
            session, obj, _, _ = established(Session(shared(certified=rsa_certified), made), name="rsa.test",
                                             maximum=maximum)
            self.assertEqual(obj.getpeercert()["subjectAltName"], (("DNS", "rsa.test"),))
        other = stdlib_tests.CA.issue(["other.test"], key_type="rsa").key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )
        leaf = crypto_leaf(ContextBuilder(Clock()).served(rsa_certified))
        self.assertRaises(ssl.SSLError, openssl.compiled.Certificate, leaf, other, "RSA")
        self.assertRaises(ssl.SSLError, openssl.compiled.Certificate, leaf, other, "EC")


def crypto_leaf(the_served: Any) -> bytes:
    from OpenSSL import crypto

    return crypto.dump_certificate(crypto.FILETYPE_ASN1, the_served.leaf)


class SharedSessionForTests(SynchronousTestCase):
    """
    ContextBuilder.session_for on the own binding before a certificate is
    busy: from its first connection on the shared context of its chain and
    ALPN list, from the busy count on a context of its own.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.builder = ContextBuilder(self.clock)

    def kinds(self, count: int, certified: Any = CERTIFIED, alpn: tuple[bytes, ...] = H2) -> list[str]:
        kinds = []
        for _ in range(count):
            session = self.builder.session_for(certified, alpn, Owner())
            kinds.append("pyopenssl" if isinstance(session, PyOpenSSLSession)
                         else "shared" if session.context.shared else "own")
        return kinds

    def test_from_the_first_connection(self) -> None:
        """Shared from the first connection until the promotion, then a context of its own."""
        promote = self.builder.std.promote_after
        self.assertEqual(self.kinds(promote + 2), ["shared"] * (promote - 1) + ["own"] * 3)
        self.assertEqual(self.builder.std.shared_contexts(), 1)
        self.assertEqual(self.builder.std.certificates(), 1)
        self.assertEqual(self.builder.hot_contexts(), 0)

    def test_one_shared_context_per_chain_and_alpn(self) -> None:
        """Certificates with the same intermediates share one context per ALPN list, each with its certificate."""
        self.builder.std.limit = 0  # never a context of its own
        others = [stdlib_tests.CA.issue(["%s.test" % n], include_ca=True) for n in "xy"]
        sessions = []
        for certified in (CERTIFIED, *others):
            for alpn in (H2, ()):
                sessions.append(self.builder.session_for(certified, alpn, Owner()))
        self.assertEqual(len({id(s.context) for s in sessions}), 2)
        self.assertEqual(self.builder.std.shared_contexts(), 2)
        self.assertEqual(self.builder.std.certificates(), 3)

    def count_parses(self) -> list[object]:
        """The certificates the own binding takes in from now on (each parse)."""
        from kongacme.tls import stdlib

        parsed: list[object] = []
        real = stdlib.openssl_certificate

        def counting(served: Any) -> Any:
            parsed.append(served)
            return real(served)

        self.patch(stdlib, "openssl_certificate", counting)
        return parsed

    def pyopenssl_sends(self, count: int) -> None:
        """As if pyOpenSSL sent ``count`` tickets per handshake in this process (OPENSSL_CONF)."""
        from kongacme.tls import stdlib

        self.patch(stdlib, "pyopenssl_tickets", lambda: count)

    def test_limits(self) -> None:
        """
        At most certificate_limit certificates held (the least recently
        used out); 0: none, all on pyOpenSSL.
        """
        self.builder.std.limit = 0
        self.builder.std.certificate_limit = 2
        certs = [stdlib_tests.CA.issue(["%s.test" % n], include_ca=True) for n in "xyz"]
        for certified in certs[:2]:
            self.assertEqual(self.kinds(2, certified), ["shared", "shared"])
        promote = self.builder.std.promote_after
        self.assertEqual(self.kinds(promote, certs[2]), ["shared"] * promote)
        self.assertEqual(self.builder.std.certificates(), 2)
        self.builder.std.certificate_limit = 0
        self.assertEqual(self.kinds(3, certs[2]), ["pyopenssl"] * 3)

    def test_full_keeps_busier_only(self) -> None:
        """
        While certificate_limit certificates are held, another is kept only
        from its promote_after-th connection (one kept pushes one out: no
        churn when more names are in use); before that each of its
        connections is still on the own binding (the ticket count
        configured, where pyOpenSSL sends OpenSSL's two), its leaf and key
        made for that connection.
        """
        self.pyopenssl_sends(2)
        self.builder.std.limit = 0
        self.builder.std.certificate_limit = 1
        self.builder.std.promote_after = 4
        first, second = (stdlib_tests.CA.issue(["%s.test" % n], include_ca=True) for n in "pq")
        parsed = self.count_parses()
        self.assertEqual(self.kinds(2, first), ["shared", "shared"])
        self.assertEqual(len(parsed), 1)
        self.assertEqual(self.kinds(5, second), ["shared"] * 5)
        self.assertEqual(len(parsed), 5)  # one per connection up to the 4th, then kept
        self.assertEqual(self.builder.std.certificates(), 1)
        self.assertEqual(self.kinds(1, first), ["shared"])
        self.assertEqual(len(parsed), 6)  # pushed out by the second

    def test_full_pyopenssl_sending_as_many(self) -> None:
        """
        Where pyOpenSSL sends the count configured (OPENSSL_CONF), a
        certificate not kept yet while the limit is reached is served there
        (no parse per connection), with session_tickets on (one) or off
        (none).
        """
        for tickets, count in ((True, 1), (False, 0)):
            self.builder = ContextBuilder(self.clock, session_tickets=tickets)
            self.pyopenssl_sends(count)
            self.builder.std.limit = 0
            self.builder.std.certificate_limit = 1
            self.builder.std.promote_after = 4
            first, second = (stdlib_tests.CA.issue(["%s.test" % n], include_ca=True) for n in "pq")
            self.assertEqual(self.kinds(1, first), ["shared"])
            self.assertEqual(self.kinds(5, second), ["pyopenssl"] * 3 + ["shared"] * 2)
            self.pyopenssl_sends(count + 1)
            third = stdlib_tests.CA.issue(["r.test"], include_ca=True)
            self.assertEqual(self.kinds(1, third), ["shared"])

    def test_certificate_goes_with_its_owner(self) -> None:
        """A certificate's objects are held only while it is."""
        self.builder.std.limit = 0
        certified = stdlib_tests.CA.issue(["gone.test"], include_ca=True)
        self.kinds(2, certified)
        self.assertEqual(self.builder.std.certificates(), 1)
        del certified
        gc.collect()
        self.assertEqual(self.builder.std.certificates(), 0)

    def test_rotated(self) -> None:
        """A shared context older than ticket_key_rotation is built anew (new ticket keys)."""
        self.builder.std.limit = 0
        self.kinds(1)
        first = self.builder.session_for(CERTIFIED, H2, Owner()).context
        self.clock.advance(self.builder.ticket_key_rotation - 1)
        self.assertIs(self.builder.session_for(CERTIFIED, H2, Owner()).context, first)
        self.clock.advance(2)
        self.assertIsNot(self.builder.session_for(CERTIFIED, H2, Owner()).context, first)
        self.assertEqual(self.builder.std.shared_contexts(), 1)

    def test_forget_all(self) -> None:
        """Changed settings drop the shared contexts and the certificates; so does another binding."""
        self.kinds(3)
        self.builder.forget_all()
        self.assertEqual((self.builder.std.shared_contexts(), self.builder.std.certificates()), (0, 0))
        self.kinds(3)
        self.builder.std.binding = "stdlib"
        self.assertEqual((self.builder.std.shared_contexts(), self.builder.std.certificates()), (0, 0))
        self.assertEqual(self.kinds(3), ["pyopenssl"] * 3)  # no shared contexts on the standard library

    def test_refused_stays_on_pyopenssl(self) -> None:
        """
        A certificate OpenSSL refuses (or whose key pyOpenSSL cannot dump)
        stays on pyOpenSSL, with one warning, and is not tried again.
        """
        from OpenSSL import crypto
        from twisted.logger import LogLevel

        from kongacme.tls import stdlib
        from tests.proxyhelpers import LogCapture

        for error in (ssl.SSLError(1, "[SSL] refused"), crypto.Error([("", "", "unsupported")])):
            def refuse(served: Any, error: Exception = error) -> Any:
                raise error

            self.patch(stdlib, "openssl_certificate", refuse)
            self.builder = ContextBuilder(self.clock)
            self.builder.std.limit = 0
            logs = LogCapture("kongacme.tls.stdlib").start(self)
            self.assertEqual(self.kinds(4), ["pyopenssl"] * 4)
            warnings = [e["log_format"] for e in logs.events if e["log_level"] == LogLevel.warn]
            self.assertEqual(len(warnings), 1)
            self.assertIn("stays on pyOpenSSL", warnings[0])

    def test_tls12_client(self) -> None:
        """A client not offering TLS 1.3 gets a shared session too (no session cache there)."""
        kinds = [type(self.builder.session_for(CERTIFIED, H2, Owner(), tls13=False)) for _ in range(3)]
        self.assertEqual(kinds, [Session, Session, Session])
