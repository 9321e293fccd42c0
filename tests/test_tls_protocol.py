"""
Tests for kongacme.tls.protocol, with real TLS clients (Python ssl, curl,
openssl s_client) over real sockets on 127.0.0.1.
"""

import hashlib
import os
import socket
import ssl

from cryptography.hazmat.primitives.serialization import Encoding
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from kongacme.testing import TestCA
from kongacme.tls.cache import CertificateCache
from kongacme.tls.context import ContextBuilder
from kongacme.tls.fallback import FALLBACK_NAME, generate_self_signed
from kongacme.tls.protocol import SNITLSProtocol, TLSServerFactory

from tests.tlsbinding import use_binding
from tests import tlsclients
from tests.clienthellos import append_sni_extension, client_hello_bytes, with_raw_sni
from tests.test_tls_upstream_close import BODY as HTTP10_BODY, fetch_until_close_blocking


@implementer(IHalfCloseableProtocol)
class EchoOrHTTP(Protocol):
    """
    Echoes bytes; answers an HTTP/1.1 GET with 200 and closes; answers an
    HTTP/1.0 GET with 200 and closes its write side (as a proxy does when
    the upstream closes first); on EOF writes b"EOF" and half-closes.
    """

    def connectionMade(self):
        self.factory.hellos.append(getattr(self, "client_hello", None))

    def dataReceived(self, data):
        if data.startswith(b"GET ") and b" HTTP/1.0\r\n" in data:
            self.transport.write(b"HTTP/1.0 200 OK\r\n\r\n" + HTTP10_BODY)
            self.transport.loseWriteConnection()
        elif data.startswith(b"GET "):
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            self.transport.loseConnection()
        else:
            self.transport.write(data)

    def readConnectionLost(self):
        self.transport.write(b"EOF")
        self.transport.loseWriteConnection()

    def writeConnectionLost(self):
        pass


class TLSTestMixin:
    """
    Starts a TLS listener with a test CA and a few certificates.
    ``binding``: the TLS binding of every connection's session.
    """

    handshake_timeout = 10.0
    alpn = (b"h2", b"http/1.1")
    binding = "pyopenssl"

    def setUp(self):
        self.ca = TestCA.create()
        self.tmp = self.mktemp()
        os.makedirs(self.tmp)
        self.cafile = self.ca.write_ca(os.path.join(self.tmp, "ca.pem"))
        self.fallback = generate_self_signed()
        self.cache = CertificateCache(self.fallback)
        self.cache.put(self.ca.issue(["exact.test"]))
        self.cache.put(self.ca.issue(["rsa.test"], key_type="rsa"))
        self.cache.put(self.ca.issue(["*.wild.test"]))
        self.wrapped = Factory.forProtocol(EchoOrHTTP)
        self.wrapped.hellos = []
        builder = ContextBuilder(reactor)
        use_binding(builder, self.binding)
        self.factory = TLSServerFactory(
            self.cache,
            builder,
            self.wrapped,
            reactor,
            alpn_for=lambda name: self.alpn,
            handshake_timeout=self.handshake_timeout,
        )
        self.port = reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.portno = self.port.getHost().port

    def verified(self, **kwargs):
        return tlsclients.client_context(self.cafile, **kwargs)


class CertificateSelectionTests(TLSTestMixin, TestCase):
    """
    Tests for SNITLSProtocol's certificate choice, seen by Python's ssl.
    """

    @inlineCallbacks
    def test_exact_wildcard_fallback_nosni(self):
        """Exact name, wildcard (one label), unknown name and no SNI each get the right leaf."""
        exact = yield tlsclients.handshake(self.portno, "exact.test", self.verified())
        self.assertEqual(exact["names"], ["exact.test"])
        self.assertEqual(exact["echo"], b"ping")
        wild = yield tlsclients.handshake(self.portno, "a.wild.test", self.verified())
        self.assertEqual(wild["names"], ["*.wild.test"])
        deep = yield tlsclients.handshake(self.portno, "a.b.wild.test", tlsclients.client_context())
        self.assertEqual(deep["names"], [FALLBACK_NAME])
        unknown = yield tlsclients.handshake(self.portno, "unknown.test", tlsclients.client_context())
        self.assertEqual(unknown["names"], [FALLBACK_NAME])
        nosni = yield tlsclients.handshake(self.portno, None, tlsclients.client_context())
        self.assertEqual(nosni["names"], [FALLBACK_NAME])
        self.assertEqual([h.server_name for h in self.wrapped.hellos],
                         ["exact.test", "a.wild.test", "a.b.wild.test", "unknown.test", None])

    @inlineCallbacks
    def test_rsa_and_ecdsa(self):
        """RSA and ECDSA certificates both verify, over TLS 1.2 and 1.3."""
        for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            for name in ("rsa.test", "exact.test"):
                result = yield tlsclients.handshake(
                    self.portno, name, self.verified(minimum=version, maximum=version)
                )
                self.assertEqual(result["names"], [name])
                self.assertEqual(result["version"], {ssl.TLSVersion.TLSv1_2: "TLSv1.2",
                                                     ssl.TLSVersion.TLSv1_3: "TLSv1.3"}[version])

    @inlineCallbacks
    def test_replacement_next_handshake(self):
        """A certificate replaced in the cache is served on the next handshake, no restart."""
        before = yield tlsclients.handshake(self.portno, "exact.test", self.verified())
        replacement = self.ca.issue(["exact.test", "extra.test"])
        self.cache.put(replacement)
        after = yield tlsclients.handshake(self.portno, "exact.test", self.verified())
        self.assertEqual(before["names"], ["exact.test"])
        self.assertEqual(after["names"], ["exact.test", "extra.test"])

    @inlineCallbacks
    def test_session_resumption(self):
        """Session tickets resume TLS 1.3 and TLS 1.2 sessions."""
        for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
            context = self.verified(minimum=version, maximum=version)
            first = yield tlsclients.handshake(self.portno, "exact.test", context)
            second = yield tlsclients.handshake(self.portno, "exact.test", context, session=first["session"])
            self.assertFalse(first["reused"])
            self.assertTrue(second["reused"], version)


class ProtocolPolicyTests(TLSTestMixin, TestCase):
    """
    Tests for the protocol versions and ALPN answers of SNITLSProtocol.
    """

    @inlineCallbacks
    def test_alpn(self):
        """Clients offering h2, http/1.1 or only an unknown protocol all connect."""
        h2 = yield tlsclients.handshake(self.portno, "exact.test", self.verified(alpn=["h2", "http/1.1"]))
        self.assertEqual(h2["alpn"], "h2")
        h1 = yield tlsclients.handshake(self.portno, "exact.test", self.verified(alpn=["http/1.1"]))
        self.assertEqual(h1["alpn"], "http/1.1")
        unknown = yield tlsclients.handshake(self.portno, "exact.test", self.verified(alpn=["foo/9"]))
        self.assertIsNone(unknown["alpn"])
        self.alpn = ()
        none = yield tlsclients.handshake(self.portno, "exact.test", self.verified(alpn=["h2", "http/1.1"]))
        self.assertIsNone(none["alpn"])

    @inlineCallbacks
    def test_old_versions_refused(self):
        """TLS 1.0 and 1.1 handshakes fail; the listener keeps serving."""
        for flag in ("-tls1", "-tls1_1"):
            out, err, code = yield tlsclients.s_client(
                self.portno, "-servername", "exact.test", flag, "-cipher", "DEFAULT@SECLEVEL=0"
            )
            self.assertNotEqual(code, 0, (out, err))
        ok = yield tlsclients.handshake(self.portno, "exact.test", self.verified())
        self.assertEqual(ok["echo"], b"ping")

    @inlineCallbacks
    def test_curl(self):
        """curl (which offers ALPN) verifies the chain and gets an HTTP answer."""
        self.alpn = (b"http/1.1",)
        url = "https://exact.test:%d/" % (self.portno,)
        out, err, code = yield tlsclients.curl(
            url, "--cacert", self.cafile, "--resolve", "exact.test:%d:127.0.0.1" % (self.portno,)
        )
        self.assertEqual((code, out), (0, b"200 0 1.1"), err)

    @inlineCallbacks
    def test_openssl_s_client(self):
        """openssl s_client verifies the wildcard certificate and negotiates TLS 1.3 with X25519."""
        out, err, code = yield tlsclients.s_client(
            self.portno, "-servername", "x.wild.test", "-CAfile", self.cafile,
            "-verify_return_error", "-alpn", "h2,http/1.1",
        )
        text = (out + err).decode()
        self.assertEqual(code, 0, text)
        self.assertIn("Verification: OK", text)
        self.assertIn("Protocol version: TLSv1.3", text)
        self.assertIn("X25519", text)
        self.assertIn("CN = *.wild.test", text)


class NoDelayTests(TLSTestMixin, TestCase):
    """
    The TLS listener's sockets send without Nagle's delay (TCP_NODELAY), as
    HAProxy's and hitch's do: the pump writes whole records.
    """

    @inlineCallbacks
    def test_accepted_socket_has_no_delay(self):
        client = socket.create_connection(("127.0.0.1", self.portno))
        self.addCleanup(client.close)
        accepted = []
        for _ in range(200):
            accepted = [s for s in reactor.getReaders() if isinstance(getattr(s, "protocol", None), SNITLSProtocol)]
            if accepted:
                break
            yield deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(len(accepted), 1)
        self.assertTrue(accepted[0].getTcpNoDelay())


class HostileInputTests(TLSTestMixin, TestCase):
    """
    Tests for SNITLSProtocol under garbage and stalls: the listener stays up.
    """

    handshake_timeout = 0.5

    @inlineCallbacks
    def assertStillServing(self):
        result = yield tlsclients.handshake(self.portno, "exact.test", self.verified())
        self.assertEqual(result["echo"], b"ping")

    @inlineCallbacks
    def test_random_bytes(self):
        """Random bytes instead of a ClientHello: connection closed, nothing sent back."""
        received = yield deferToThread(tlsclients.raw_exchange_blocking, self.portno, os.urandom(512))
        self.assertEqual(received, b"")
        received = yield deferToThread(tlsclients.raw_exchange_blocking, self.portno, b"GET / HTTP/1.1\r\n\r\n")
        self.assertEqual(received, b"")
        yield self.assertStillServing()

    @inlineCallbacks
    def test_hostile_sni(self):
        """
        A 255-byte or non-ASCII SNI gets the fallback certificate; one OpenSSL
        refuses (a NUL byte, 256 bytes) gets an unrecognized_name alert from
        kongacme, counted as rejected; the listener keeps serving.
        """
        fallback = self.fallback.chain[0].public_bytes(Encoding.DER)
        for raw in (b"a" * 255, "bücher.test".encode("utf-8"), b"a" * 63 + b".\x01\x7f.test"):
            received = yield deferToThread(read_server_flight_blocking, self.portno, tls12_hello_with_sni(raw), fallback)
            self.assertIn(fallback, received, raw)
        for raw in (b"a\x00b.test", b"exact.test\x00", b"a" * 256, b"a." * 200):
            received = yield deferToThread(tlsclients.raw_exchange_blocking, self.portno, with_raw_sni(raw))
            self.assertEqual(received, b"\x15\x03\x03\x00\x02\x02\x70", raw)  # fatal unrecognized_name
        self.assertEqual(self.factory.handshakes["rejected"], 4)
        yield self.assertStillServing()

    @inlineCallbacks
    def test_trailing_dot_sni(self):
        """An SNI with a trailing dot ("exact.test.") is served exact.test's certificate."""
        exact = self.cache.lookup("exact.test").chain[0].public_bytes(Encoding.DER)
        received = yield deferToThread(
            read_server_flight_blocking, self.portno, tls12_hello_with_sni(b"Exact.Test."), exact
        )
        self.assertIn(exact, received)
        self.assertEqual(self.wrapped.hellos[-1].server_name, "exact.test")

    @inlineCallbacks
    def test_stalled_mid_hello(self):
        """A client stalling inside its ClientHello is cut off after the timeout, others served meanwhile."""
        stalled = socket.create_connection(("127.0.0.1", self.portno))
        self.addCleanup(stalled.close)
        stalled.sendall(client_hello_bytes("exact.test")[:20])
        yield self.assertStillServing()
        closed_after = yield deferToThread(seconds_until_closed, stalled)
        self.assertLess(closed_after, 3.0)

    @inlineCallbacks
    def test_stalled_mid_handshake(self):
        """A client that sends its hello and then nothing is cut off after the timeout."""
        stalled = socket.create_connection(("127.0.0.1", self.portno))
        self.addCleanup(stalled.close)
        stalled.sendall(client_hello_bytes("exact.test"))
        first = yield deferToThread(stalled.recv, 65536)
        self.assertEqual(first[:1], b"\x16")
        yield self.assertStillServing()
        closed_after = yield deferToThread(seconds_until_closed, stalled)
        self.assertLess(closed_after, 3.0)


def tls12_hello_with_sni(raw: bytes) -> bytes:
    """
    A TLS 1.2 ClientHello (so the server's Certificate message travels in
    the clear) whose only SNI carries ``raw`` verbatim.
    """
    return append_sni_extension(client_hello_bytes(max_version=ssl.TLSVersion.TLSv1_2), raw)


def read_server_flight_blocking(port: int, hello: bytes, until: bytes, limit: float = 5.0) -> bytes:
    """Send ``hello`` and read what comes back until ``until`` shows up, the server closes or ``limit`` passes."""
    with socket.create_connection(("127.0.0.1", port), timeout=limit) as sock:
        sock.sendall(hello)
        received = b""
        try:
            while until not in received:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += chunk
        except (socket.timeout, ConnectionResetError):
            pass
        return received


def seconds_until_closed(sock, limit=5.0):
    """Block until the server closes ``sock`` (FIN or RST); return the wait."""
    import time

    sock.settimeout(limit)
    start = time.monotonic()
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    return time.monotonic() - start


class HalfCloseTests(TLSTestMixin, TestCase):
    """
    Tests for half-close through SNITLSProtocol.
    """

    @inlineCallbacks
    def test_close_notify_half_close(self):
        """After the client's close_notify the server can still send, then closes."""
        payload = os.urandom(300_000)
        received = yield deferToThread(
            tlsclients.half_close_blocking, self.portno, "exact.test", payload, "close_notify"
        )
        self.assertEqual(hashlib.sha256(received).hexdigest(), hashlib.sha256(payload + b"EOF").hexdigest())

    @inlineCallbacks
    def test_tcp_fin_half_close(self):
        """A TCP FIN from the client is a half-close too: the server's reply still arrives."""
        payload = b"x" * 1000
        received = yield deferToThread(tlsclients.half_close_blocking, self.portno, "exact.test", payload, "fin")
        self.assertEqual(received, payload + b"EOF")

    @inlineCallbacks
    def test_server_closes_first(self):
        """
        The server side closes its write side first, then the client closes
        (close_notify or a bare FIN): the client got every byte and the
        server's close_notify, and nothing is logged as an error (this was
        an AttributeError from _flushSendBIO, which fails the test).
        """
        for client_close in ("close_notify", "fin", "close_notify"):
            body, clean = yield deferToThread(
                fetch_until_close_blocking, self.portno, "exact.test", self.cafile, client_close
            )
            self.assertEqual(body, b"HTTP/1.0 200 OK\r\n\r\n" + HTTP10_BODY)
            self.assertTrue(clean, client_close)
        # Let the server read the last client's close before the test ends.
        yield tlsclients.handshake(self.portno, "exact.test", self.verified())


class HandshakeGateTests(TLSTestMixin, TestCase):
    """
    Tests for the IHandshakeGate seam: a gate can hold a handshake until a
    certificate is in the cache, without blocking other connections.
    """

    @inlineCallbacks
    def test_gate_holds_then_serves_new_certificate(self):
        """A held handshake gets the certificate put into the cache while it waited."""
        released = Deferred()
        asked = []

        class Gate:
            def before_handshake(self, server_name):
                asked.append(server_name)
                return released if server_name == "new.test" else None

        self.factory.gate = Gate()
        waiting = tlsclients.handshake(self.portno, "new.test", self.verified())
        while not asked:
            yield deferLater(reactor, 0.01, lambda: None)
        other = yield tlsclients.handshake(self.portno, "exact.test", self.verified())
        self.assertEqual(other["names"], ["exact.test"])
        self.assertFalse(waiting.called)
        self.cache.put(self.ca.issue(["new.test"]))
        released.callback(None)
        result = yield waiting
        self.assertEqual(result["names"], ["new.test"])
        self.assertEqual(asked, ["new.test", "exact.test"])

    @inlineCallbacks
    def test_cache_fill_not_counted_as_held(self):
        """
        A gate that fires with GATE_CACHE_FILLED (a worker fetching a
        certificate its master holds) counts the handshake as cached, not
        held_then_issued; any other result counts it as held.
        """
        from kongacme.interfaces import GATE_CACHE_FILLED

        results = iter([GATE_CACHE_FILLED, None])

        class Gate:
            def before_handshake(self, server_name):
                released = Deferred()
                reactor.callLater(0.01, released.callback, next(results))
                return released

        self.factory.gate = Gate()
        for _ in range(2):
            result = yield tlsclients.handshake(self.portno, "exact.test", self.verified())
            self.assertEqual(result["names"], ["exact.test"])
        self.assertEqual(self.factory.handshakes["cached"], 1)
        self.assertEqual(self.factory.handshakes["held_then_issued"], 1)


class HandshakeGateTimeoutTests(TLSTestMixin, TestCase):
    """
    Tests for the bounds on how long a gate may hold a handshake.
    """

    handshake_timeout = 0.3

    @inlineCallbacks
    def test_gate_longer_than_handshake_timeout(self):
        """Time held by the gate does not count against handshake_timeout."""
        released = Deferred()

        class Gate:
            def before_handshake(self, server_name):
                return released

        self.factory.gate = Gate()
        waiting = tlsclients.handshake(self.portno, "exact.test", self.verified())
        yield deferLater(reactor, 0.6, lambda: None)
        released.callback(None)
        result = yield waiting
        self.assertEqual(result["names"], ["exact.test"])

    @inlineCallbacks
    def test_gate_that_never_answers(self):
        """A gate that never fires is given up after gate_timeout; the handshake goes ahead."""

        class Gate:
            def before_handshake(self, server_name):
                return Deferred()

        self.factory.gate = Gate()
        self.factory.gate_timeout = 0.2
        result = yield tlsclients.handshake(self.portno, "unknown.test", tlsclients.client_context())
        self.assertEqual(result["names"], [FALLBACK_NAME])


# The same listener with every session on the standard library's ssl (a busy
# certificate's, for a client offering TLS 1.3) instead of pyOpenSSL.


class CertificateSelectionStdlibTests(CertificateSelectionTests):
    binding = "stdlib"


class ProtocolPolicyStdlibTests(ProtocolPolicyTests):
    binding = "stdlib"


class HostileInputStdlibTests(HostileInputTests):
    binding = "stdlib"


class HalfCloseStdlibTests(HalfCloseTests):
    binding = "stdlib"


# The same listener on kongacme's own OpenSSL binding (kongacme.tls._openssl),
# a busy certificate's where it is built, TLS 1.2 clients included.


class CertificateSelectionOpenSSLTests(CertificateSelectionTests):
    binding = "openssl"


class ProtocolPolicyOpenSSLTests(ProtocolPolicyTests):
    binding = "openssl"


class HostileInputOpenSSLTests(HostileInputTests):
    binding = "openssl"


class HalfCloseOpenSSLTests(HalfCloseTests):
    binding = "openssl"


# The same listener on the own binding's shared contexts (a certificate's
# connections from its second until it is busy), TLS 1.2 clients included.


class CertificateSelectionSharedTests(CertificateSelectionTests):
    binding = "shared"


class HalfCloseSharedTests(HalfCloseTests):
    binding = "shared"
