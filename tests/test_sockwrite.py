"""
Tests for kongacme.sockwrite, over a real TCP connection on 127.0.0.1.
"""

import socket

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.internet.task import deferLater
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from kongacme.sockwrite import SocketWriter


class Made(Protocol):
    def connectionMade(self):
        self.factory.made.callback(self)


class SocketWriterTests(TestCase):
    """
    Tests for SocketWriter on a Twisted TCP transport.
    """

    async def connected(self):
        peer = socket.socket()
        self.addCleanup(peer.close)
        peer.bind(("127.0.0.1", 0))
        peer.listen(1)
        factory = ClientFactory.forProtocol(Made)
        factory.made = Deferred()
        reactor.connectTCP("127.0.0.1", peer.getsockname()[1], factory)
        protocol = await factory.made
        accepted, _ = peer.accept()
        self.addCleanup(accepted.close)
        self.addCleanup(protocol.transport.abortConnection)
        return protocol.transport, accepted

    async def test_direct_then_queued(self):
        """
        Small writes reach the peer at once, without Twisted's queue; a
        write larger than the kernel takes goes to the transport for the
        rest, and so does every later write, in order.
        """
        transport, peer = await self.connected()
        writer = SocketWriter(transport)
        writer.write(b"hello")
        self.assertTrue(writer.direct)
        self.assertEqual(peer.recv(100), b"hello")
        big = bytes(range(256)) * (64 * 1024)  # 16 MiB: more than the socket buffers
        writer.write(big)
        writer.write(b"tail")
        self.assertFalse(writer.direct)
        got = b""
        peer.settimeout(10)
        while len(got) < len(big) + 4:
            await deferLater(reactor, 0, lambda: None)
            try:
                got += peer.recv(1 << 20, socket.MSG_DONTWAIT)
            except BlockingIOError:
                pass
        self.assertEqual(got, big + b"tail")


class SocketWriterFallbackTests(SynchronousTestCase):
    """
    Tests for SocketWriter on transports that are not Twisted TCP connections.
    """

    def test_string_transport(self):
        """Writes go through transport.write."""
        transport = StringTransport()
        writer = SocketWriter(transport)
        writer.write(b"a")
        writer.write(b"b")
        self.assertFalse(writer.direct)
        self.assertEqual(transport.value(), b"ab")
