"""
Tests for kongacme.tls.context.
"""

from __future__ import annotations

import gc
import ssl

from cryptography import x509
from OpenSSL import SSL
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from kongacme.testing import TestCA
from kongacme.tls.certs import CertifiedKey
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from kongacme.errors import CertificateError
from kongacme.tls import owned as owned_module
from kongacme.tls.context import PROMOTE_AFTER, ContextBuilder, Intermediates, ServedCertificate, chain_key


def pump(server: SSL.Connection, client_step, client_in, client_out) -> None:
    """Shuttle bytes between a memory-BIO server and a client until both are done."""
    server.set_accept_state()
    server_done = client_done = False
    for _ in range(50):
        if not client_done:
            client_done = client_step()
        data = client_out()
        if data:
            server.bio_write(data)
        if not server_done:
            try:
                server.do_handshake()
                server_done = True
            except SSL.WantReadError:
                pass
        try:
            client_in(server.bio_read(65536))
        except SSL.WantReadError:
            pass
        if server_done and client_done:
            return
    raise AssertionError("handshake did not finish")


def python_handshake(
    server: SSL.Connection, name: str, trusted: bytes, alpn: list[str] | None = None
) -> ssl.SSLObject:
    """A verifying handshake by Python's ``ssl`` trusting only ``trusted`` (PEM), offering ``alpn``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cadata=trusted.decode("ascii"))
    if alpn:
        context.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = context.wrap_bio(incoming, outgoing, server_hostname=name)

    def step() -> bool:
        try:
            client.do_handshake()
            return True
        except ssl.SSLWantReadError:
            return False

    pump(server, step, incoming.write, outgoing.read)
    return client


def sent_chain(server: SSL.Connection, name: str) -> list[x509.Certificate]:
    """The certificates the server sent to a (non-verifying) pyOpenSSL client."""
    client = SSL.Connection(SSL.Context(SSL.TLS_CLIENT_METHOD), None)
    client.set_connect_state()
    client.set_tlsext_host_name(name.encode("ascii"))

    def step() -> bool:
        try:
            client.do_handshake()
            return True
        except SSL.WantReadError:
            return False

    def client_out() -> bytes:
        try:
            return client.bio_read(65536)
        except SSL.WantReadError:
            return b""

    pump(server, step, client.bio_write, client_out)
    return [c.to_cryptography() for c in client.get_peer_cert_chain(as_cryptography=False) or []]


class ContextBuilderTests(SynchronousTestCase):
    """
    Tests for kongacme.tls.context.ContextBuilder.
    """

    def setUp(self):
        self.root = TestCA.create()
        self.intermediate = self.root.intermediate()
        self.clock = Clock()
        self.builder = ContextBuilder(self.clock, ticket_key_rotation=3600)

    def test_groups_without_pyopenssl_binding(self):
        """
        A pyOpenSSL without the cffi binding the profile's groups are set
        through: contexts are built all the same (OpenSSL's default groups),
        clients get through, and one warning says so, once.
        """
        from kongacme.tls import context as context_module

        self.patch(context_module, "_lib", None)
        self.patch(context_module, "_groups_warned", False)
        logged: list[dict] = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        certified = self.intermediate.issue(["a.test"], include_ca=True)
        client = python_handshake(self.builder.connection_for(certified), "a.test", self.root.ca_pem())
        self.assertEqual(client.version(), "TLSv1.3")
        self.builder.build()
        warnings = [e for e in logged if "key exchange groups" in e.get("log_format", "")]
        self.assertEqual(len(warnings), 1)
        self.assertEqual(warnings[0]["groups"], "X25519:prime256v1:secp384r1")

    def test_full_chain_sent(self):
        """
        A connection presents its own leaf followed by the intermediates
        of the shared context: a client trusting only the root verifies it.
        """
        certified = self.intermediate.issue(["a.test"], include_ca=True)
        client = python_handshake(self.builder.connection_for(certified), "a.test", self.root.ca_pem())
        self.assertIn(("DNS", "a.test"), client.getpeercert()["subjectAltName"])
        chain = sent_chain(self.builder.connection_for(certified), "a.test")
        self.assertEqual(chain, list(certified.chain))

    def test_leaf_per_connection(self):
        """
        Certificates with the same intermediates share one context, yet
        each connection presents its own certificate with the full chain.
        """
        a = self.intermediate.issue(["a.test"], include_ca=True)
        b = self.intermediate.issue(["b.test"], include_ca=True)
        self.assertIs(self.builder.context_for(a), self.builder.context_for(b))
        self.assertEqual(sent_chain(self.builder.connection_for(a), "a.test"), list(a.chain))
        self.assertEqual(sent_chain(self.builder.connection_for(b), "b.test"), list(b.chain))
        self.assertEqual(self.builder.contexts(), 1)
        self.assertEqual(len(self.builder), 2)

    def test_chains_apart(self):
        """Different intermediates (or none) get contexts of their own, each sending its own."""
        other = self.root.intermediate("another intermediate")
        a = self.intermediate.issue(["a.test"], include_ca=True)
        b = other.issue(["b.test"], include_ca=True)
        bare = self.root.issue(["c.test"])
        contexts = {id(self.builder.context_for(c)) for c in (a, b, bare)}
        self.assertEqual(len(contexts), 3)
        self.assertEqual(sent_chain(self.builder.connection_for(b), "b.test"), list(b.chain))
        self.assertEqual(sent_chain(self.builder.connection_for(bare), "c.test"), [bare.leaf])
        python_handshake(self.builder.connection_for(bare), "c.test", self.root.ca_pem())

    def test_chain_key(self):
        """The chain key is the intermediates' digest: equal for equal intermediates, empty for none."""
        a = self.intermediate.issue(["a.test"], include_ca=True)
        b = self.intermediate.issue(["b.test"], include_ca=True)
        self.assertEqual(chain_key(a), chain_key(b))
        self.assertEqual(len(chain_key(a)), 32)
        self.assertEqual(chain_key(self.root.issue(["c.test"])), b"")

    def test_memoised_then_rotated(self):
        """A chain's context is reused until ticket_key_rotation seconds pass, then rebuilt and used."""
        certified = self.intermediate.issue(["a.test"], include_ca=True)
        first = self.builder.context_for(certified)
        self.clock.advance(3599)
        self.assertIs(self.builder.context_for(certified), first)
        self.assertIs(self.builder.connection_for(certified).get_context(), first)
        self.clock.advance(1)
        second = self.builder.connection_for(certified).get_context()
        self.assertIsNot(second, first)
        self.assertIs(self.builder.context_for(certified), second)
        self.assertEqual(sent_chain(self.builder.connection_for(certified), "a.test"), list(certified.chain))

    def test_stale_chains_dropped(self):
        """A chain no longer in use loses its context when another is rebuilt after rotation."""
        old = self.intermediate.issue(["a.test"], include_ca=True)
        new = self.root.intermediate("next intermediate").issue(["a.test"], include_ca=True)
        self.builder.context_for(old)
        self.clock.advance(3600)
        self.builder.context_for(new)
        self.assertEqual(self.builder.contexts(), 1)

    def test_forget_all(self):
        """forget_all drops every context; the next connection builds a new one."""
        certified = self.intermediate.issue(["a.test"], include_ca=True)
        first = self.builder.context_for(certified)
        self.builder.forget_all()
        self.assertEqual(self.builder.contexts(), 0)
        self.assertIsNot(self.builder.connection_for(certified).get_context(), first)

    def test_forgotten_with_certificate(self):
        """A certificate's prepared leaf and key are held weakly: gone with the certificate."""
        certified = self.intermediate.issue(["a.test"], include_ca=True)
        self.builder.connection_for(certified)
        self.assertEqual(len(self.builder), 1)
        del certified
        gc.collect()
        self.assertEqual(len(self.builder), 0)

    def test_key_not_matching(self):
        """A certificate whose key is not the leaf's is refused by connection_for with SSL.Error."""
        a = self.intermediate.issue(["a.test"], include_ca=True)
        b = self.intermediate.issue(["b.test"], include_ca=True)
        mixed = CertifiedKey(chain=a.chain, key=b.key, source="mixed")
        self.assertRaises(SSL.Error, self.builder.connection_for, mixed)

    def test_alpn(self):
        """The ALPN callback of the shared context picks from the connection's app data."""

        class Route:
            alpn_allowed = (b"http/1.1",)

        certified = self.intermediate.issue(["a.test"], include_ca=True)
        server = self.builder.connection_for(certified)
        server.set_app_data(Route())
        client = python_handshake(server, "a.test", self.root.ca_pem(), alpn=["h2", "http/1.1"])
        self.assertEqual(client.selected_alpn_protocol(), "http/1.1")

    def test_hot_after_promotion(self):
        """
        A certificate's first PROMOTE_AFTER - 1 connections start from the
        shared context; from then on they start from one context of its
        own, which presents the leaf and the full chain and answers ALPN.
        """
        certified = self.intermediate.issue(["a.test"], include_ca=True)
        shared = self.builder.context_for(certified)
        for _ in range(PROMOTE_AFTER - 1):
            self.assertIs(self.builder.connection_for(certified).get_context(), shared)
        self.assertEqual(self.builder.hot_contexts(), 0)
        own = self.builder.connection_for(certified).get_context()
        self.assertIsNot(own, shared)
        self.assertIs(self.builder.connection_for(certified).get_context(), own)
        self.assertEqual(self.builder.hot_contexts(), 1)
        self.assertEqual(self.builder.contexts(), 1)
        self.assertEqual(sent_chain(self.builder.connection_for(certified), "a.test"), list(certified.chain))

        class Route:
            alpn_allowed = (b"http/1.1",)

        server = self.builder.connection_for(certified)
        self.assertIs(server.get_context(), own)
        server.set_app_data(Route())
        client = python_handshake(server, "a.test", self.root.ca_pem(), alpn=["h2", "http/1.1"])
        self.assertEqual(client.selected_alpn_protocol(), "http/1.1")
        self.assertIn(("DNS", "a.test"), client.getpeercert()["subjectAltName"])

    def test_hot_without_intermediates(self):
        """A certificate with no intermediates gets its own context too, sending its leaf alone."""
        self.builder.promote_after = 1
        bare = self.root.issue(["c.test"])
        server = self.builder.connection_for(bare)
        self.assertEqual(self.builder.hot_contexts(), 1)
        self.assertEqual(sent_chain(server, "c.test"), [bare.leaf])

    def test_hot_rotated(self):
        """A certificate's own context is rebuilt after ticket_key_rotation seconds, on its next connection."""
        self.builder.promote_after = 1
        certified = self.intermediate.issue(["a.test"], include_ca=True)
        first = self.builder.connection_for(certified).get_context()
        self.clock.advance(3599)
        self.assertIs(self.builder.connection_for(certified).get_context(), first)
        self.clock.advance(1)
        second = self.builder.connection_for(certified).get_context()
        self.assertIsNot(second, first)
        self.assertIs(self.builder.connection_for(certified).get_context(), second)
        self.assertEqual(self.builder.hot_contexts(), 1)

    def test_hot_least_recently_used_out(self):
        """
        Past hot_limit certificates the least recently used loses its own
        context, and counts its connections from the start again.
        """
        self.builder.hot_limit = 2
        self.builder.promote_after = 2
        a, b, c = (self.intermediate.issue([n], include_ca=True) for n in ("a.test", "b.test", "c.test"))
        shared = self.builder.context_for(a)
        own = {}
        for certified in (a, b):
            self.builder.connection_for(certified)
            own[certified] = self.builder.connection_for(certified).get_context()
        self.builder.connection_for(a)  # a used last: b is the least recently used
        self.builder.connection_for(c)
        self.builder.connection_for(c)
        self.assertEqual(self.builder.hot_contexts(), 2)
        self.assertIs(self.builder.connection_for(a).get_context(), own[a])
        self.assertIs(self.builder.connection_for(b).get_context(), shared)
        again = self.builder.connection_for(b).get_context()
        self.assertIsNot(again, shared)
        self.assertIsNot(again, own[b])

    def test_counts_start_over(self):
        """Past COUNTED certificates counted, the counts start over (they only hint)."""
        self.patch(owned_module, "COUNTED", 2)
        self.builder.promote_after = 2
        a, b, c = (self.intermediate.issue([n], include_ca=True) for n in ("a.test", "b.test", "c.test"))
        for certified in (a, b, c):
            self.builder.connection_for(certified)
        self.assertEqual(self.builder.hot_contexts(), 0)
        self.builder.connection_for(a)  # its first count was dropped with the others
        self.assertEqual(self.builder.hot_contexts(), 0)
        self.builder.connection_for(c)
        self.assertEqual(self.builder.hot_contexts(), 1)

    def test_hot_gone_with_certificate(self):
        """A certificate's own context goes when the certificate does."""
        self.builder.promote_after = 1
        certified = self.intermediate.issue(["a.test"], include_ca=True)
        self.builder.connection_for(certified)
        self.assertEqual(self.builder.hot_contexts(), 1)
        del certified
        gc.collect()
        self.assertEqual(self.builder.hot_contexts(), 0)
        self.assertEqual(len(self.builder), 0)

    def test_hot_forgotten(self):
        """forget_all drops the certificates' own contexts and counts too."""
        self.builder.promote_after = 2
        certified = self.intermediate.issue(["a.test"], include_ca=True)
        self.builder.connection_for(certified)
        self.builder.connection_for(certified)
        own = self.builder.connection_for(certified).get_context()
        self.builder.forget_all()
        self.assertEqual(self.builder.hot_contexts(), 0)
        after = self.builder.connection_for(certified).get_context()
        self.assertIsNot(after, own)
        self.assertIs(after, self.builder.context_for(certified))

    def test_hot_key_not_matching(self):
        """A key that is not the leaf's is refused when its own context is built too, and nothing is kept."""
        self.builder.promote_after = 1
        a = self.intermediate.issue(["a.test"], include_ca=True)
        b = self.intermediate.issue(["b.test"], include_ca=True)
        mixed = CertifiedKey(chain=a.chain, key=b.key, source="mixed")
        self.assertRaises(SSL.Error, self.builder.connection_for, mixed)
        self.assertEqual(self.builder.hot_contexts(), 0)

    def test_no_tickets(self):
        """With session_tickets off the context carries OP_NO_TICKET."""
        builder = ContextBuilder(Clock(), session_tickets=False)
        context = builder.build()
        self.assertTrue(context.set_options(0) & SSL.OP_NO_TICKET)


class ServedCertificateTests(SynchronousTestCase):
    """
    Tests for kongacme.tls.context.ServedCertificate, the form a worker
    holds a certificate in.
    """

    def setUp(self):
        self.root = TestCA.create()
        self.intermediate = self.root.intermediate()
        self.builder = ContextBuilder(Clock())
        self.certified = self.intermediate.issue(["a.test", "www.a.test"], include_ca=True)
        self.chain = Intermediates.of(self.certified.chain[1:])

    def served(self, certified: CertifiedKey, key_pem: bytes | None = None) -> ServedCertificate:
        leaf_pem = certified.leaf.public_bytes(serialization.Encoding.PEM)
        return ServedCertificate.from_pem(leaf_pem, key_pem or certified.key_pem(), self.chain, source="entry")

    def test_from_pem(self):
        """Parsed from PEM it reads as the CertifiedKey does, and serves the same chain."""
        served = self.served(self.certified)
        self.assertEqual(served.names, self.certified.names)
        self.assertEqual(served.not_after, self.certified.not_after)
        self.assertEqual(served.fingerprint, self.certified.fingerprint)
        self.assertEqual(self.chain.key, chain_key(self.certified))
        client = python_handshake(self.builder.connection_for(served), "www.a.test", self.root.ca_pem())
        self.assertIn(("DNS", "www.a.test"), client.getpeercert()["subjectAltName"])
        self.assertEqual(sent_chain(self.builder.connection_for(served), "a.test"), list(self.certified.chain))
        self.assertIn("a.test", repr(served))

    def test_rsa(self):
        """An RSA leaf and key are taken too."""
        certified = self.intermediate.issue(["r.test"], include_ca=True, key_type="rsa")
        served = self.served(certified)
        self.assertEqual(sent_chain(self.builder.connection_for(served), "r.test"), list(certified.chain))

    def test_shares_context_with_certified(self):
        """A served form and a CertifiedKey under the same intermediates share one context."""
        other = self.intermediate.issue(["b.test"], include_ca=True)
        self.assertIs(self.builder.context_for(self.served(self.certified)), self.builder.context_for(other))
        self.assertEqual(self.builder.contexts(), 1)

    def test_served_as_is(self):
        """The builder keeps nothing per served certificate; a CertifiedKey is converted once."""
        served = self.served(self.certified)
        self.assertIs(self.builder.served(served), served)
        self.assertEqual(len(self.builder), 0)
        converted = self.builder.served(self.certified)
        self.assertIs(self.builder.served(self.certified), converted)
        self.assertEqual(converted.fingerprint, self.certified.fingerprint)
        self.assertEqual(len(self.builder), 1)

    def test_bad_certificate(self):
        """A leaf that is not PEM is refused with a CertificateError naming the source."""
        e = self.assertRaises(
            CertificateError, ServedCertificate.from_pem, b"not a certificate", self.certified.key_pem(), self.chain,
            "entry",
        )
        self.assertIn("entry", str(e))
        self.assertIn("no valid PEM certificate", str(e))

    def test_bad_key(self):
        """A key that is not PEM is refused."""
        e = self.assertRaises(CertificateError, self.served, self.certified, b"not a key")
        self.assertIn("no valid unencrypted PEM private key", str(e))

    def test_key_not_matching(self):
        """A key that is not the leaf's is refused when parsed, not at the first handshake."""
        other = self.intermediate.issue(["b.test"], include_ca=True)
        e = self.assertRaises(CertificateError, self.served, self.certified, other.key_pem())
        self.assertIn("private key does not match the certificate", str(e))

    def test_unsupported_key(self):
        """Only RSA and ECDSA keys are taken."""
        key = ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        e = self.assertRaises(CertificateError, self.served, self.certified, key)
        self.assertIn("only RSA and ECDSA", str(e))
