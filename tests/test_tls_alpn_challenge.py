"""
Tests for kongacme.tls.alpn_challenge: the tls-alpn-01 certificate (RFC
8737 §3), the responder, and the TLS listener's answer to ``acme-tls/1``
hellos seen by a real client.
"""

from __future__ import annotations

import datetime
import hashlib
import socket
import ssl

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail, inlineCallbacks, succeed
from twisted.internet.task import Clock, deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from kongacme.tls.alpn_challenge import (
    ACME_TLS_1,
    LOOKUP_TIMEOUT,
    ID_PE_ACME_IDENTIFIER,
    ChallengeResponder,
    acme_identifier_value,
    challenge_certificate,
    is_challenge_hello,
)
from kongacme.tls import openssl
from kongacme.tls.clienthello import ClientHello, parse_client_hello
from kongacme.tls.records import count_records
from kongacme.tls.session import PyOpenSSLSession

from tests import tlsclients
from tests.clienthellos import client_hello_bytes
from tests.test_tls_protocol import TLSTestMixin
from tests.test_tls_stdlib import handshake

KEY_AUTHORIZATION = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA.9jg46WB3rR_AHD-EBXdN7cBkH1WOu0tA3M9fm21mqTI"


class ChallengeCertificateTests(SynchronousTestCase):
    """Tests for challenge_certificate and acme_identifier_value."""

    def test_fields(self) -> None:
        """
        Self-signed, one dNSName, and a critical id-pe-acmeIdentifier whose
        value is the DER OCTET STRING of SHA-256(key authorization).
        """
        now = datetime.datetime(2026, 12, 3, tzinfo=datetime.timezone.utc)
        certified = challenge_certificate("a.example.test", KEY_AUTHORIZATION, now)
        certificate, key = certified.chain[0], certified.key
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        self.assertEqual(list(san.value), [x509.DNSName("a.example.test")])
        extension = certificate.extensions.get_extension_for_oid(ID_PE_ACME_IDENTIFIER)
        self.assertTrue(extension.critical)
        digest = hashlib.sha256(KEY_AUTHORIZATION.encode("ascii")).digest()
        self.assertEqual(extension.value.value, bytes([0x04, 32]) + digest)
        self.assertEqual(certificate.issuer, certificate.subject)
        certificate.verify_directly_issued_by(certificate)
        self.assertEqual(certificate.public_key(), key.public_key())
        self.assertLessEqual(certificate.not_valid_before_utc, now)
        self.assertGreater(certificate.not_valid_after_utc, now)

    def test_rfc8737_example(self) -> None:
        """The extension value starts with the OCTET STRING tag and length (RFC 8737 §3)."""
        value = acme_identifier_value(KEY_AUTHORIZATION)
        self.assertEqual((len(value), value[:2]), (34, b"\x04\x20"))

    def test_non_ascii_key_authorization(self) -> None:
        """A key authorization is ASCII (base64url and a dot): anything else is an error."""
        self.assertRaises(UnicodeEncodeError, acme_identifier_value, "tökén.x")


class ChallengeHelloTests(SynchronousTestCase):
    """Tests for is_challenge_hello on real ClientHellos."""

    def hello(self, alpn: list[str] | None) -> ClientHello:
        parsed = parse_client_hello(client_hello_bytes("a.example.test", alpn=alpn))
        assert parsed is not None
        return parsed

    def test_only_acme_tls(self) -> None:
        """acme-tls/1 alone is a validation."""
        self.assertTrue(is_challenge_hello(self.hello(["acme-tls/1"])))

    def test_beside_other_protocols(self) -> None:
        """acme-tls/1 with h2 is not (RFC 8737 §3: the only protocol), nor no ALPN, nor h2 alone."""
        self.assertFalse(is_challenge_hello(self.hello(["h2", "acme-tls/1"])))
        self.assertFalse(is_challenge_hello(self.hello(["acme-tls/1", "http/1.1"])))
        self.assertFalse(is_challenge_hello(self.hello(None)))
        self.assertFalse(is_challenge_hello(self.hello(["h2"])))


def session_context(session: object) -> object:
    """The context a challenge session is on (either binding)."""
    if isinstance(session, PyOpenSSLSession):
        return session.connection.get_context()
    return session.context  # type: ignore[attr-defined]


def challenge_handshake(session: object) -> tuple[str | None, int, x509.Certificate]:
    """
    A TLS 1.3 handshake in memory with ``session``, as a client offering
    acme-tls/1: the protocol negotiated, the session tickets the server
    sent after the client's Finished, and its certificate.
    """
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["acme-tls/1"])
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = context.wrap_bio(incoming, outgoing, server_hostname="a.example.test")
    after = handshake(session, obj, incoming, outgoing)  # type: ignore[arg-type]
    der = obj.getpeercert(binary_form=True)
    assert der is not None
    return obj.selected_alpn_protocol(), count_records(0, b"", after)[0], x509.load_der_x509_certificate(der)


class FakeLookup:
    """A lookup answering from a dict, counting calls."""

    def __init__(self, pending: dict[str, str]):
        self.pending = pending
        self.asked: list[str] = []

    def __call__(self, name: str) -> Deferred:
        self.asked.append(name)
        return succeed(self.pending.get(name))


class ChallengeResponderTests(SynchronousTestCase):
    """Tests for ChallengeResponder."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_800_000_000)
        self.lookup = FakeLookup({"a.example.test": KEY_AUTHORIZATION})
        self.responder = ChallengeResponder(self.lookup, self.clock)

    def test_pending_cached(self) -> None:
        """A pending challenge gets a session; its context is built once per (name, key authorization)."""
        hello = ClientHello(server_name="a.example.test", alpn_offered=(ACME_TLS_1,))
        first = self.successResultOf(self.responder.session_for(hello))
        second = self.successResultOf(self.responder.session_for(hello))
        self.assertIs(session_context(first), session_context(second))
        self.lookup.pending["a.example.test"] = "other." + KEY_AUTHORIZATION.split(".")[1]
        third = self.successResultOf(self.responder.session_for(hello))
        self.assertIsNot(session_context(third), session_context(first))
        self.assertEqual(self.responder.answered, 3)

    def test_no_ticket(self) -> None:
        """
        A validation's handshake negotiates acme-tls/1 and sends no session
        ticket on the own binding (a CA never resumes one); on pyOpenSSL,
        OpenSSL's own count.
        """
        hello = ClientHello(server_name="a.example.test", alpn_offered=(ACME_TLS_1,))
        alpn, tickets, certificate = challenge_handshake(self.successResultOf(self.responder.session_for(hello)))
        extension = certificate.extensions.get_extension_for_oid(ID_PE_ACME_IDENTIFIER)
        self.assertEqual(extension.value.value, acme_identifier_value(KEY_AUTHORIZATION))
        self.assertEqual(alpn, "acme-tls/1")
        if openssl.compiled is not None:
            self.assertEqual(tickets, 0)

    def test_pyopenssl(self) -> None:
        """Where the own binding is not built, the session is pyOpenSSL's, negotiating acme-tls/1 too."""
        self.patch(openssl, "compiled", None)
        hello = ClientHello(server_name="a.example.test", alpn_offered=(ACME_TLS_1,))
        session = self.successResultOf(self.responder.session_for(hello))
        self.assertIsInstance(session, PyOpenSSLSession)
        self.assertEqual(challenge_handshake(session)[0], "acme-tls/1")

    def test_not_pending(self) -> None:
        """No pending challenge, or no SNI: None, counted, one log line a minute."""
        flushed = []
        from twisted.logger import globalLogPublisher

        globalLogPublisher.addObserver(flushed.append)
        self.addCleanup(globalLogPublisher.removeObserver, flushed.append)
        for name in ("b.example.test", "c.example.test", None):
            hello = ClientHello(server_name=name, alpn_offered=(ACME_TLS_1,))
            self.assertIsNone(self.successResultOf(self.responder.session_for(hello)))
        self.assertEqual(self.responder.refused, 3)
        self.assertEqual(self.lookup.asked, ["b.example.test", "c.example.test"])
        lines = [e for e in flushed if "acme-tls/1" in e.get("log_format", "")]
        self.assertEqual([e["name"] for e in lines], ["b.example.test"])
        self.clock.advance(61)
        hello = ClientHello(server_name="d.example.test", alpn_offered=(ACME_TLS_1,))
        self.successResultOf(self.responder.session_for(hello))
        lines = [e for e in flushed if "acme-tls/1" in e.get("log_format", "")]
        self.assertEqual([(e["name"], e["unlogged"]) for e in lines], [("b.example.test", 0), ("d.example.test", 2)])

    def test_lookups_bounded(self) -> None:
        """Beyond max_lookups running at once, an acme-tls/1 hello is refused without a lookup."""
        waiting: list[Deferred] = []

        def lookup(name: str) -> Deferred:
            waiting.append(Deferred())
            return waiting[-1]

        responder = ChallengeResponder(lookup, self.clock, max_lookups=2)
        hello = ClientHello(server_name="a.example.test", alpn_offered=(ACME_TLS_1,))
        results = [responder.session_for(hello) for _ in range(3)]
        self.assertEqual(len(waiting), 2)
        self.assertIsNone(self.successResultOf(results[2]))
        waiting[0].callback(KEY_AUTHORIZATION)
        self.assertIsNotNone(self.successResultOf(results[0]))
        results.append(responder.session_for(hello))
        self.assertEqual(len(waiting), 3)
        waiting[1].callback(None)
        waiting[2].callback(KEY_AUTHORIZATION)
        self.assertIsNone(self.successResultOf(results[1]))
        self.assertIsNotNone(self.successResultOf(results[3]))
        self.assertEqual((responder.answered, responder.refused), (2, 2))

    def test_lookup_timeout(self) -> None:
        """A lookup that never answers is given up after LOOKUP_TIMEOUT: refused, its slot freed."""
        responder = ChallengeResponder(lambda name: Deferred(), self.clock, max_lookups=1)
        hello = ClientHello(server_name="a.example.test", alpn_offered=(ACME_TLS_1,))
        first = responder.session_for(hello)
        self.assertNoResult(first)
        self.clock.advance(LOOKUP_TIMEOUT)
        self.assertIsNone(self.successResultOf(first))
        second = responder.session_for(hello)
        self.assertNoResult(second)
        self.assertEqual(responder.refused, 1)

    def test_lookup_fails(self) -> None:
        """A failing lookup (storage down) is logged and refused, not raised."""
        responder = ChallengeResponder(lambda name: fail(RuntimeError("storage down")), self.clock)
        hello = ClientHello(server_name="a.example.test", alpn_offered=(ACME_TLS_1,))
        self.assertIsNone(self.successResultOf(responder.session_for(hello)))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


def acme_tls_blocking(port: int, server_name: str | None, alpn: list[str]) -> dict:
    """
    Handshake as a CA validating tls-alpn-01 does, then read until the
    server closes.

    :return: ``der``, ``alpn`` and ``after`` (bytes read after the
        handshake: ``b""`` when the server closed at once).
    """
    context = tlsclients.client_context(alpn=alpn)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=server_name) as tls:
            der = tls.getpeercert(binary_form=True)
            alpn_chosen = tls.selected_alpn_protocol()
            try:
                after = tls.recv(100)
            except ssl.SSLEOFError:
                after = b""
            return {"der": der, "alpn": alpn_chosen, "after": after}


class ListenerTests(TLSTestMixin, TestCase):
    """Tests for the TLS listener's answer to acme-tls/1 hellos (SNITLSProtocol with a responder)."""

    def setUp(self) -> None:
        super().setUp()
        self.lookup = FakeLookup({"a.example.test": KEY_AUTHORIZATION})
        self.factory.challenges = ChallengeResponder(self.lookup, reactor)

    @inlineCallbacks
    def test_pending(self):
        """
        The challenge certificate, acme-tls/1 negotiated, closed after the
        handshake, never proxied, counted as acme_tls_alpn.
        """
        result = yield deferToThread(acme_tls_blocking, self.portno, "a.example.test", ["acme-tls/1"])
        self.assertEqual(result["alpn"], "acme-tls/1")
        self.assertEqual(result["after"], b"")
        certificate = x509.load_der_x509_certificate(result["der"])
        extension = certificate.extensions.get_extension_for_oid(ID_PE_ACME_IDENTIFIER)
        self.assertEqual(extension.value.value, acme_identifier_value(KEY_AUTHORIZATION))
        self.assertIsInstance(certificate.public_key(), ec.EllipticCurvePublicKey)
        self.assertEqual(self.wrapped.hellos, [])
        self.assertEqual(dict(self.factory.handshakes), {"acme_tls_alpn": 1})

    @inlineCallbacks
    def test_not_pending(self):
        """No pending challenge for the name: an alert (no_application_protocol), no handshake."""
        with self.assertRaises(ssl.SSLError) as caught:
            yield deferToThread(acme_tls_blocking, self.portno, "exact.test", ["acme-tls/1"])
        self.assertIn("NO APPLICATION PROTOCOL", str(caught.exception).upper())
        self.assertEqual(self.wrapped.hellos, [])
        self.assertEqual(dict(self.factory.handshakes), {"rejected": 1})

    @inlineCallbacks
    def test_with_h2(self):
        """acme-tls/1 offered beside h2 is an ordinary client: the cached certificate, proxied."""
        result = yield tlsclients.handshake(
            self.portno, "exact.test", tlsclients.client_context(self.cafile, alpn=["acme-tls/1", "h2"])
        )
        self.assertEqual((result["names"], result["alpn"], result["echo"]), (["exact.test"], "h2", b"ping"))
        self.assertEqual(self.lookup.asked, [])
        self.assertEqual(dict(self.factory.handshakes), {"cached": 1})

    @inlineCallbacks
    def test_garbage_then_challenge(self):
        """Garbage is dropped as before; a validation right after it is answered."""
        raw = yield deferToThread(tlsclients.raw_exchange_blocking, self.portno, b"\x16\x03\x01\x00\x05hello")
        self.assertEqual(raw, b"")
        result = yield deferToThread(acme_tls_blocking, self.portno, "a.example.test", ["acme-tls/1"])
        self.assertEqual(result["alpn"], "acme-tls/1")
        self.assertEqual(dict(self.factory.handshakes), {"rejected": 1, "acme_tls_alpn": 1})

    @inlineCallbacks
    def test_never_held(self):
        """The handshake gate (on-demand issuance) is not consulted for a validation; it is for others."""
        asked = []

        class Gate:
            def before_handshake(self, server_name):
                asked.append(server_name)
                return None

        self.factory.gate = Gate()
        yield deferToThread(acme_tls_blocking, self.portno, "a.example.test", ["acme-tls/1"])
        with self.assertRaises(ssl.SSLError):
            yield deferToThread(acme_tls_blocking, self.portno, "new.example.test", ["acme-tls/1"])
        self.assertEqual(asked, [])
        yield tlsclients.handshake(self.portno, "exact.test", self.verified())
        self.assertEqual(asked, ["exact.test"])

    @inlineCallbacks
    def test_client_gone_during_lookup(self):
        """A client that leaves while the key authorization is looked up is counted abandoned; nothing breaks."""
        pending: Deferred = Deferred()
        self.factory.challenges = ChallengeResponder(lambda name: pending, reactor)
        hello = client_hello_bytes("a.example.test", alpn=["acme-tls/1"])
        yield deferToThread(tlsclients.raw_exchange_blocking, self.portno, hello, 0.3)
        while self.factory.handshakes["abandoned"] < 1:
            yield deferLater(reactor, 0.01, lambda: None)
        pending.callback(KEY_AUTHORIZATION)
        self.assertEqual(dict(self.factory.handshakes), {"abandoned": 1})
