"""
Tests for kongacme.proxy.connect, over real sockets on 127.0.0.1.
"""

import socket

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionRefusedError, TimeoutError
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase

from kongacme.proxy.connect import DirectConnect, NameCache, family_of
from kongacme.timers import TimerWheel
from tests.proxyhelpers import unanswered_port


class Told(Protocol):
    def connectionMade(self):
        self.factory.made.callback(self.transport)


class DirectConnectTests(TestCase):
    """
    Tests for DirectConnect.
    """

    def setUp(self):
        self.wheel = TimerWheel(reactor)
        self.factory = Factory.forProtocol(Told)
        self.factory.made = Deferred()
        self.failures = []

    async def test_connects(self):
        """A listening upstream: the factory's protocol is connected to it."""
        port = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        attempt = DirectConnect(reactor, socket.AF_INET, ("127.0.0.1", port.getHost().port), self.factory,
                                self.failures.append)
        attempt.start(self.wheel, 5)
        transport = await self.factory.made
        self.assertEqual(transport.getPeer().port, port.getHost().port)
        transport.loseConnection()
        self.assertEqual(self.failures, [])
        self.assertEqual(len(self.wheel), 0)

    async def test_refused(self):
        """A closed port fails with ConnectionRefusedError naming the reason."""
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()[1]
        probe.close()
        failed = Deferred()
        attempt = DirectConnect(reactor, socket.AF_INET, ("127.0.0.1", dead), self.factory, lambda f: failed.callback([f]))
        attempt.start(self.wheel, 5)
        (failure,) = await failed
        self.assertIsInstance(failure.value, ConnectionRefusedError)
        self.assertIn("refused", str(failure.value))

    async def test_timeout_and_cancel(self):
        """
        An upstream that never answers fails after the timeout; a cancelled
        attempt reports nothing.
        """
        full = unanswered_port(self)
        failed = Deferred()
        attempt = DirectConnect(reactor, socket.AF_INET, ("127.0.0.1", full), self.factory, lambda f: failed.callback([f]))
        attempt.start(self.wheel, 0.3)
        (failure,) = await failed
        self.assertIsInstance(failure.value, TimeoutError)
        quiet = DirectConnect(reactor, socket.AF_INET, ("127.0.0.1", full), self.factory, self.failures.append)
        quiet.start(self.wheel, 0.3)
        quiet.cancel()
        self.assertEqual((self.failures, len(self.wheel)), ([], 0))

    def test_family_of(self):
        """IPv6 literals get AF_INET6, everything else AF_INET."""
        self.assertEqual(family_of("::1"), socket.AF_INET6)
        self.assertEqual(family_of("127.0.0.1"), socket.AF_INET)


class NameCacheTests(TestCase):
    """
    Tests for NameCache.
    """

    async def test_resolve_once_then_cached(self):
        """
        A name is looked up once; later connections read the cache, and
        concurrent lookups share one.
        """
        names = NameCache(reactor, ttl=60)
        self.assertIsNone(names.cached("localhost", 80))
        first, second = names.resolve("localhost", 80), names.resolve("localhost", 80)
        addresses = await first
        self.assertEqual(await second, addresses)
        self.assertIn((socket.AF_INET, ("127.0.0.1", 80)), addresses)
        self.assertEqual(names.cached("localhost", 80), addresses)

    async def test_unknown_name(self):
        """A name that does not resolve fails the lookup and is not cached."""
        names = NameCache(reactor)
        with self.assertRaises(OSError):
            await names.resolve("no-such-host.invalid", 80)
        self.assertIsNone(names.cached("no-such-host.invalid", 80))
