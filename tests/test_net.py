"""
Tests for kongacme.net.
"""

from __future__ import annotations

from typing import Optional

from OpenSSL import SSL
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from kongacme.net import UnverifiedTLS, canonical_ip, client_endpoint, client_tls, is_ip_literal, peer_name
from kongacme.testing import TestCA


class IsIPLiteralTests(SynchronousTestCase):
    """
    Tests for is_ip_literal.
    """

    def test_addresses(self) -> None:
        """
        IPv4 and IPv6 addresses, IPv6 in brackets or with a zone, are IP
        literals.
        """
        for host in ("127.0.0.1", "192.0.2.10", "::1", "[::1]", "2001:db8::5", "fe80::1%eth0", "::ffff:10.0.0.1"):
            self.assertTrue(is_ip_literal(host), host)

    def test_names(self) -> None:
        """
        Host names, partial addresses and the empty string are not.
        """
        for host in ("example.com", "localhost", "1.2.3", "1.2.3.4.5", "256.1.1.1", "", "[example.com]"):
            self.assertFalse(is_ip_literal(host), host)


class CanonicalIPTests(SynchronousTestCase):
    """
    Tests for canonical_ip.
    """

    def test_forms(self) -> None:
        """
        IPv6 addresses get their RFC 5952 form (as Twisted's PROXY v2
        parser does not), IPv4 stays, names pass unchanged.
        """
        self.assertEqual(canonical_ip("2001:db8:0:0:0:0:0:7"), "2001:db8::7")
        self.assertEqual(canonical_ip("2001:DB8::A"), "2001:db8::a")
        self.assertEqual(canonical_ip("198.51.100.7"), "198.51.100.7")
        self.assertEqual(canonical_ip("unknown"), "unknown")


class PeerNameTests(SynchronousTestCase):
    """
    Tests for peer_name.
    """

    def test_addresses(self) -> None:
        """
        IPv4 peers read host:port; IPv6 peers [host]:port in canonical form.
        """
        transport = StringTransport(peerAddress=IPv4Address("TCP", "198.51.100.7", 51234))
        self.assertEqual(peer_name(transport), "198.51.100.7:51234")
        transport = StringTransport(peerAddress=IPv6Address("TCP", "2001:db8:0:0:0:0:0:7", 40000))
        self.assertEqual(peer_name(transport), "[2001:db8::7]:40000")

    def test_none(self) -> None:
        """
        A transport without a peer (gone, or none at all) reads "?".
        """
        self.assertEqual(peer_name(None), "?")


class ClientEndpointTests(SynchronousTestCase):
    """
    Tests for client_endpoint.
    """

    def test_ipv4(self) -> None:
        """
        An IPv4 address connects directly over TCP4, with the timeout.
        """
        reactor = MemoryReactorClock()
        endpoint = client_endpoint(reactor, "192.0.2.1", 6379, 2.5)
        self.assertIsInstance(endpoint, TCP4ClientEndpoint)
        endpoint.connect(Factory.forProtocol(Protocol))
        host, port, _, timeout, _ = reactor.tcpClients[0]
        self.assertEqual((host, port, timeout), ("192.0.2.1", 6379, 2.5))

    def test_ipv6_brackets(self) -> None:
        """
        An IPv6 address, brackets or not, connects directly over TCP6 to
        the bare address.
        """
        for written in ("2001:db8::1", "[2001:db8::1]"):
            reactor = MemoryReactorClock()
            endpoint = client_endpoint(reactor, written, 8000, 1.0)
            self.assertIsInstance(endpoint, TCP6ClientEndpoint)
            endpoint.connect(Factory.forProtocol(Protocol))
            self.assertEqual(reactor.tcpClients[0][:2], ("2001:db8::1", 8000))

    def test_name(self) -> None:
        """
        A host name goes through HostnameEndpoint (resolution, happy
        eyeballs).
        """
        self.assertIsInstance(client_endpoint(MemoryReactorClock(), "redis.example", 6379, 1.0), HostnameEndpoint)


def _server_context(names_seen: list[Optional[bytes]]) -> SSL.Context:
    """A server context with a certificate no client trusts, recording the SNI it gets."""
    ca = TestCA.create()
    certified = ca.issue(["server.test"])
    context = SSL.Context(SSL.TLS_METHOD)
    context.use_certificate(certified.chain[0])
    context.use_privatekey(certified.key)
    context.set_tlsext_servername_callback(lambda connection: names_seen.append(connection.get_servername()))
    return context


def _handshake(client: SSL.Connection, server: SSL.Connection) -> None:
    """Both sides over memory BIOs until each has finished its handshake."""
    client.set_connect_state()
    server.set_accept_state()
    done = [False, False]
    for _ in range(20):
        for i, (side, other) in enumerate(((client, server), (server, client))):
            if not done[i]:
                try:
                    side.do_handshake()
                    done[i] = True
                except SSL.WantReadError:
                    pass
            try:
                other.bio_write(side.bio_read(65536))
            except SSL.WantReadError:
                pass
        if all(done):
            return
    raise AssertionError("handshake did not finish")


class UnverifiedTLSTests(SynchronousTestCase):
    """
    Tests for UnverifiedTLS and client_tls.
    """

    def connect(self, creator: IOpenSSLClientConnectionCreator) -> list[Optional[bytes]]:
        seen: list[Optional[bytes]] = []
        server = SSL.Connection(_server_context(seen), None)
        _handshake(creator.clientConnectionForTLS(None), server)
        return seen

    def test_interface(self) -> None:
        """
        UnverifiedTLS is a client connection creator.
        """
        verifyObject(IOpenSSLClientConnectionCreator, UnverifiedTLS("example.com"))

    def test_any_certificate_with_sni(self) -> None:
        """
        The handshake completes against a certificate from an unknown CA
        for another name, and the server gets the name as SNI.
        """
        self.assertEqual(self.connect(UnverifiedTLS("redis.example")), [b"redis.example"])

    def test_no_sni_for_addresses(self) -> None:
        """
        An IP address or no name sends no SNI (RFC 6066 allows names only).
        """
        for name in ("192.0.2.1", "::1", None):
            self.assertEqual(self.connect(UnverifiedTLS(name)), [None], name)

    def test_client_tls(self) -> None:
        """
        client_tls gives UnverifiedTLS when not verifying, and Twisted's
        verifying creator otherwise.
        """
        self.assertIsInstance(client_tls("vault.example", verify=False), UnverifiedTLS)
        verifying = client_tls("vault.example", verify=True)
        self.assertNotIsInstance(verifying, UnverifiedTLS)
        verifyObject(IOpenSSLClientConnectionCreator, verifying)
