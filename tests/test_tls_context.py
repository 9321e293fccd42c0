"""
Tests for kongacme.tls.context.
"""

from __future__ import annotations

import gc
import ssl

from cryptography import x509
from OpenSSL import SSL
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from kongacme.testing import TestCA
from kongacme.tls.certs import CertifiedKey
from kongacme.tls.context import ContextBuilder, chain_key


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

    def test_no_tickets(self):
        """With session_tickets off the context carries OP_NO_TICKET."""
        builder = ContextBuilder(Clock(), session_tickets=False)
        context = builder.build()
        self.assertTrue(context.set_options(0) & SSL.OP_NO_TICKET)
