"""
The two relay callbacks that guard themselves inline (``dataReceived`` and
``_upstream_data``, one call per chunk each way) contain an unexpected error
like every other proxy callback: logged once, both sides aborted, nothing
raised to the reactor.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.test.proto_helpers import StringTransport
from twisted.trial import unittest

from tests import test_proxy_forward as forward_tests


class BrokenWrite(StringTransport):
    """A transport whose ``write`` fails: a bug below the relay."""

    aborted = False

    def write(self, data: bytes) -> None:
        raise RuntimeError("write failed")

    def abortConnection(self) -> None:
        self.aborted = True


class RelayGuardTests(unittest.SynchronousTestCase):
    """
    With the proxy unit tests' fixtures: a fake reactor, string transports.
    """

    setUp = forward_tests.ProxyProtocolUnitTests.setUp
    connect_client = forward_tests.ProxyProtocolUnitTests.connect_client
    accept_upstream = forward_tests.ProxyProtocolUnitTests.accept_upstream

    def test_error_relaying_to_upstream(self) -> None:
        """
        An error while writing a client chunk upstream is logged once and
        aborts both sides; ``dataReceived`` returns normally.
        """
        protocol, client = self.connect_client()
        host, port, factory, _, _ = self.reactor.tcpClients[-1]
        upstream = factory.buildProtocol(IPv4Address("TCP", host, port))
        broken = BrokenWrite()
        upstream.makeConnection(broken)
        protocol.dataReceived(b"GET / HTTP/1.1\r\n\r\n")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertTrue(broken.aborted)
        self.assertTrue(client.disconnecting or client.disconnected)

    def test_error_relaying_to_client(self) -> None:
        """
        An error while writing an upstream chunk to the client is logged
        once and aborts both sides; the upstream's ``dataReceived`` returns
        normally.
        """
        broken = BrokenWrite()
        protocol, _ = self.connect_client(transport=broken)
        upstream, up = self.accept_upstream()
        upstream.dataReceived(b"HTTP/1.1 200 OK\r\n\r\n")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertTrue(broken.aborted)
        self.assertTrue(up.disconnecting or up.disconnected)
