"""
Tests for kongacme.connlimit: the budget derived from the open-file limit,
pausing listeners at their caps (with fakes and with real sockets), one
log line per episode, and accept batches clamped to the room left.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import resource
import socket

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock, deferLater
from twisted.internet.threads import deferToThread
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from kongacme.config.daemon import LimitsConfig
from kongacme.connlimit import SETTLE, Budget, ConnectionLimiter, derive_budget, open_file_limit


def budget(max_connections=100, tls=100, http=100, admin=100, nofile=100_000, reserve=64, http_cost=1) -> Budget:
    return Budget(nofile, reserve, max_connections, {"tls": tls, "http": http, "admin": admin},
                  {"tls": 2, "http": http_cost, "admin": 1})


class FakePort:
    """A listening port that records whether it reads (accepts)."""

    def __init__(self):
        self.reading = True
        self.numberAccepts = 100
        self.disconnecting = False

    def stopReading(self):
        self.reading = False

    def startReading(self):
        self.reading = True


class Connection(Protocol):
    """A protocol that records its loss."""

    lost = False

    def connectionLost(self, reason):
        self.lost = True


def capture_logs(test) -> list[str]:
    """Formatted kongacme.connlimit log lines, for the length of ``test``."""
    from twisted.logger import formatEvent

    lines: list[str] = []

    def observer(event):
        if event.get("log_namespace", "").startswith("kongacme.connlimit"):
            lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observer)
    test.addCleanup(globalLogPublisher.removeObserver, observer)
    return lines


class DeriveBudgetTests(SynchronousTestCase):
    """
    Tests for derive_budget and open_file_limit.
    """

    def test_defaults_from_nofile(self):
        """
        A sixteenth of the limit (at least 64) is reserved; max_connections
        is half of the rest (a TLS connection costs 2 descriptors); tls gets
        all of it, http a quarter, admin 64.
        """
        b = derive_budget(LimitsConfig(), 65536)
        self.assertEqual(b.reserve_fds, 4096)
        self.assertEqual(b.max_connections, (65536 - 4096) // 2)
        self.assertEqual(dict(b.caps), {"tls": 30720, "http": 7680, "admin": 64})
        self.assertEqual(dict(b.fd_costs), {"tls": 2, "http": 1, "admin": 1})
        small = derive_budget(LimitsConfig(), 1024)
        self.assertEqual((small.reserve_fds, small.max_connections), (64, 480))
        tiny = derive_budget(LimitsConfig(), 100)
        self.assertEqual((tiny.reserve_fds, tiny.max_connections), (50, 25))

    def test_explicit_values_override(self):
        """Every explicit value wins; http in proxy mode costs 2 descriptors."""
        b = derive_budget(LimitsConfig(max_connections=10, reserve_fds=5, tls=7, http=3, admin=2), 1024, True)
        self.assertEqual((b.reserve_fds, b.max_connections), (5, 10))
        self.assertEqual(dict(b.caps), {"tls": 7, "http": 3, "admin": 2})
        self.assertEqual(b.fd_costs["http"], 2)
        self.assertEqual(b.fd_budget, 1019)

    def test_open_file_limit(self):
        """Raising sets the soft limit to the hard one; without raising it is reported as is."""
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or hard < 64:
            raise SkipTest("needs a finite hard open-file limit")
        self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))
        lowered = min(soft, hard, 512) - 1
        resource.setrlimit(resource.RLIMIT_NOFILE, (lowered, hard))
        self.assertEqual(open_file_limit(False), (lowered, lowered))
        self.assertEqual(open_file_limit(True), (lowered, hard))
        self.assertEqual(resource.getrlimit(resource.RLIMIT_NOFILE), (hard, hard))


class LimiterTests(SynchronousTestCase):
    """
    Tests for ConnectionLimiter with fake ports and a fake clock.
    """

    def setUp(self):
        self.clock = Clock()
        self.lines = capture_logs(self)

    def connect(self, factory, count=1):
        protocols = []
        for _ in range(count):
            protocol = factory.buildProtocol(None)
            protocol.makeConnection(None)
            protocols.append(protocol)
        return protocols

    def test_cap_pauses_and_resumes(self):
        """
        At its cap a listener's ports stop reading; a close resumes them;
        one warning line for the episode and one line once clear for
        SETTLE seconds, however often the cap is hit in between.
        """
        limiter = ConnectionLimiter(self.clock, budget(admin=2))
        limit = limiter.listener("admin")
        port = FakePort()
        limit.track(port)
        factory = limit.wrap(Factory.forProtocol(Connection))
        first, second = self.connect(factory, 2)
        self.assertFalse(port.reading)
        self.assertEqual(limit.in_use, 2)
        first.connectionLost(None)
        self.assertTrue(first.lost)
        self.assertTrue(port.reading)
        # A waiting connection comes in at once: the cap again.
        (third,) = self.connect(factory)
        self.assertFalse(port.reading)
        second.connectionLost(None)
        third.connectionLost(None)
        self.assertTrue(port.reading)
        self.assertEqual(limit.in_use, 0)
        warnings = [line for line in self.lines if "at its limit" in line]
        self.assertEqual(warnings, ["admin listener at its limit of 2 connections (limits.admin): "
                                    "new connections wait in the kernel backlog"])
        self.assertFalse(any("below its limit" in line for line in self.lines))
        self.clock.advance(SETTLE)
        cleared = [line for line in self.lines if "below its limit" in line]
        self.assertEqual(cleared, ["admin listener below its limit again (0 of 2 connections): accepting"])
        # Other listeners were never paused.
        self.assertFalse(limiter.listener("tls").paused)

    def test_global_limit_pauses_every_listener(self):
        """max_connections reached on one listener pauses all of them, with one line."""
        limiter = ConnectionLimiter(self.clock, budget(max_connections=3))
        ports = {}
        for kind in ("tls", "http", "admin"):
            ports[kind] = FakePort()
            limiter.listener(kind).track(ports[kind])
        tls = limiter.listener("tls").wrap(Factory.forProtocol(Connection))
        admin = limiter.listener("admin").wrap(Factory.forProtocol(Connection))
        held = self.connect(tls, 2) + self.connect(admin, 1)
        self.assertEqual([p.reading for p in ports.values()], [False, False, False])
        self.assertEqual(sum("connection limit reached" in line for line in self.lines), 1)
        held[0].connectionLost(None)
        self.assertEqual([p.reading for p in ports.values()], [True, True, True])
        self.clock.advance(SETTLE)
        self.assertEqual(sum("connections below the limit again" in line for line in self.lines), 1)

    def test_descriptor_budget(self):
        """TLS connections count 2 descriptors each against nofile − reserve."""
        limiter = ConnectionLimiter(self.clock, budget(nofile=70, reserve=64))
        port = FakePort()
        limiter.listener("tls").track(port)
        tls = limiter.listener("tls").wrap(Factory.forProtocol(Connection))
        self.connect(tls, 2)
        self.assertTrue(port.reading)
        self.connect(tls, 1)
        self.assertEqual(limiter.fds, 6)
        self.assertFalse(port.reading)

    def test_overshoot_refused(self):
        """
        A connection accepted beyond the cap (in the same accept batch) is
        closed at once, counted, and never reaches the wrapped factory.
        """
        built = []

        class Counting(Factory):
            def buildProtocol(self, addr):
                built.append(addr)
                return Connection()

        limiter = ConnectionLimiter(self.clock, budget(http=1))
        limit = limiter.listener("http")
        factory = limit.wrap(Counting())
        self.connect(factory)

        class Transport:
            aborted = False

            def abortConnection(self):
                self.aborted = True

        refused = factory.buildProtocol(None)
        transport = Transport()
        refused.makeConnection(transport)
        self.assertTrue(transport.aborted)
        self.assertEqual(len(built), 1)
        self.assertEqual((limit.in_use, limit.refused), (1, 1))

    def test_batches_clamped(self):
        """
        A port's accept batch (numberAccepts) is cut to its listener's room
        when it starts listening and after each batch of accepts.
        """
        limiter = ConnectionLimiter(self.clock, budget(tls=5))
        limit = limiter.listener("tls")
        port = FakePort()
        limit.track(port)
        self.assertEqual(port.numberAccepts, 5)
        factory = limit.wrap(Factory.forProtocol(Connection))
        self.connect(factory, 3)
        port.numberAccepts = 120  # what Twisted sets after a full batch
        self.clock.advance(0)
        self.assertEqual(port.numberAccepts, 2)

    def test_take(self):
        """
        take() (the lean engine's accept loop, which asks before it
        accepts) counts a connection while there is room and otherwise
        counts nothing, not even a refusal; the ports pause at the cap and
        resume at a close, as with acquire().
        """
        limiter = ConnectionLimiter(self.clock, budget(tls=3))
        limit = limiter.listener("tls")
        port = FakePort()
        limit.track(port)
        self.assertEqual([limit.take() for _ in range(4)], [True, True, True, False])
        self.assertEqual((limit.in_use, limit.refused, limiter.total, limiter.fds), (3, 0, 3, 6))
        self.assertFalse(port.reading)
        self.assertFalse(limiter.quiet)
        limit.release()
        self.assertTrue(port.reading)
        self.assertTrue(limiter.quiet)
        self.assertEqual((limit.in_use, limiter.total, limiter.fds), (2, 2, 4))
        self.assertTrue(limit.take())
        self.assertFalse(port.reading)

    def test_take_clamps_near_the_batch_size(self):
        """
        A take() far from every limit schedules no clamp (the lean engine
        bounds its own batches); once the room left is within the largest
        port batch, the other ports' batches are clamped after it.
        """
        limiter = ConnectionLimiter(self.clock, budget(max_connections=1000, tls=1000, http=1000))
        http_port = FakePort()
        limiter.listener("http").track(http_port)
        self.assertEqual(limiter.largest_batch, 100)
        tls = limiter.listener("tls")
        for _ in range(899):
            self.assertTrue(tls.take())
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertTrue(tls.take())  # 100 left: the http port's batch
        self.clock.advance(0)
        self.assertEqual(http_port.numberAccepts, 100)
        self.assertTrue(tls.take())
        self.clock.advance(0)
        self.assertEqual(http_port.numberAccepts, 99)

    def test_release_below_limits_keeps_ports_reading(self):
        """
        Closes far below every limit leave the counts right and every port
        reading; after a limit was reached, the close that clears it
        resumes the ports and logs once settled.
        """
        limiter = ConnectionLimiter(self.clock, budget(max_connections=10))
        ports = [FakePort(), FakePort()]
        limiter.listener("tls").track(ports[0])
        limiter.listener("http").track(ports[1])
        tls = limiter.listener("tls")
        for _ in range(5):
            tls.take()
        for _ in range(5):
            tls.release()
        self.assertEqual((limiter.total, limiter.fds, tls.in_use), (0, 0, 0))
        self.assertEqual([p.reading for p in ports], [True, True])
        for _ in range(10):
            tls.take()
        self.assertEqual([p.reading for p in ports], [False, False])
        tls.release()
        self.assertEqual([p.reading for p in ports], [True, True])
        self.clock.advance(SETTLE)
        self.assertEqual(sum("connections below the limit again" in line for line in self.lines), 1)

    def test_reconfigure(self):
        """A reload that raises a cap resumes the paused listener; lowering pauses it."""
        limiter = ConnectionLimiter(self.clock, budget(tls=1))
        port = FakePort()
        limiter.listener("tls").track(port)
        self.connect(limiter.listener("tls").wrap(Factory.forProtocol(Connection)))
        self.assertFalse(port.reading)
        limiter.reconfigure(budget(tls=10))
        self.assertTrue(port.reading)
        limiter.reconfigure(budget(tls=1))
        self.assertFalse(port.reading)
        limiter.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_new_port_of_paused_listener(self):
        """A port added while its listener is at the cap starts paused."""
        limiter = ConnectionLimiter(self.clock, budget(tls=1))
        limiter.listener("tls").track(FakePort())
        self.connect(limiter.listener("tls").wrap(Factory.forProtocol(Connection)))
        later = FakePort()
        limiter.listener("tls").track(later)
        self.assertFalse(later.reading)


class Held(Protocol):
    """A server protocol the test can see and close."""

    def connectionMade(self):
        self.factory.connected.append(self)

    def dataReceived(self, data):
        self.transport.write(data)


def until(predicate, timeout=10.0) -> Deferred:
    """Poll ``predicate`` every 10 ms until true (fails after ``timeout`` s)."""

    @inlineCallbacks
    def poll():
        for _ in range(int(timeout / 0.01)):
            if predicate():
                return
            yield deferLater(reactor, 0.01, lambda: None)
        raise AssertionError("condition not met in %s s" % (timeout,))

    return poll()


class RealSocketTests(TestCase):
    """
    Tests for a capped listener on real TCP sockets: connections beyond
    the cap complete at the kernel but wait unaccepted in the backlog,
    and are served once earlier ones close.
    """

    @inlineCallbacks
    def test_backlog_until_close(self):
        """
        With a cap of 3, 7 clients connect; the server accepts 3, the other
        4 sit in the backlog (their connect succeeded), and each is accepted
        and echoed once earlier connections close.
        """
        from kongacme.listeners import ListenerSet

        limiter = ConnectionLimiter(reactor, budget(tls=3))
        self.addCleanup(limiter.stop)
        factory = self.held_factory()
        listeners = ListenerSet(reactor, "tls", factory, limiter.listener("tls"))
        errors = yield listeners.update(["tcp:0:interface=127.0.0.1"])
        self.assertEqual(errors, [])
        self.addCleanup(listeners.stop_all)
        port = listeners.ports()[0].getHost().port
        clients = []
        for _ in range(7):
            client = socket.create_connection(("127.0.0.1", port), timeout=5)
            self.addCleanup(client.close)
            clients.append(client)
        yield until(lambda: len(factory.connected) >= 3)
        # Give the reactor several turns to (wrongly) accept more.
        for _ in range(20):
            yield deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(len(factory.connected), 3)
        self.assertEqual(limiter.listener("tls").in_use, 3)
        self.assertTrue(limiter.listener("tls").paused)
        for client in clients[3:]:
            client.sendall(b"queued")
        # Closing the first connections lets the waiting ones in, in turn.
        for index in range(4):
            factory.connected[index].transport.loseConnection()
            yield until(lambda: len(factory.connected) >= 4 + index)
        self.assertEqual(len(factory.connected), 7)
        for client in clients[3:]:
            self.assertEqual(client.recv(100), b"queued")
        self.assertEqual(limiter.listener("tls").refused, 0)
        for client in clients:
            client.close()
        yield until(lambda: limiter.listener("tls").in_use == 0)
        self.assertFalse(limiter.listener("tls").paused)

    @inlineCallbacks
    def check_second_waits(self, limiter, factory, connect):
        """With a cap of 1: a second client waits until the first closes."""
        first = connect()
        self.addCleanup(first.close)
        yield until(lambda: len(factory.connected) == 1)
        second = connect()
        self.addCleanup(second.close)
        second.sendall(b"waiting")
        for _ in range(20):
            yield deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(len(factory.connected), 1)
        self.assertTrue(limiter.listener("admin").paused)
        factory.connected[0].transport.loseConnection()
        yield until(lambda: len(factory.connected) == 2)
        self.assertEqual(second.recv(100), b"waiting")

    def held_factory(self):
        factory = Factory.forProtocol(Held)
        factory.connected = []
        return factory

    @inlineCallbacks
    def test_unix_socket(self):
        """A unix: listener pauses at its cap like a TCP one."""
        from kongacme.listeners import ListenerSet

        limiter = ConnectionLimiter(reactor, budget(admin=1))
        self.addCleanup(limiter.stop)
        factory = self.held_factory()
        listeners = ListenerSet(reactor, "admin", factory, limiter.listener("admin"))
        # Not under trial's temp directory: CI's is deep enough to pass the
        # 108-byte limit of a unix socket's path.
        directory = tempfile.mkdtemp(prefix="kongacme-")
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, "admin.sock")
        errors = yield listeners.update(["unix:" + path])
        self.assertEqual(errors, [])
        self.addCleanup(listeners.stop_all)

        def connect():
            client = socket.socket(socket.AF_UNIX)
            client.settimeout(5)
            client.connect(path)
            return client

        yield self.check_second_waits(limiter, factory, connect)

    @inlineCallbacks
    def test_adopted_socket(self):
        """
        A listening socket adopted from a file descriptor (what systemd:
        endpoints do) pauses at its cap like one the reactor opened.
        """
        limiter = ConnectionLimiter(reactor, budget(admin=1))
        self.addCleanup(limiter.stop)
        factory = self.held_factory()
        inherited = socket.socket()
        inherited.bind(("127.0.0.1", 0))
        inherited.listen(50)
        inherited.setblocking(False)
        self.addCleanup(inherited.close)
        limit = limiter.listener("admin")
        port = reactor.adoptStreamPort(inherited.fileno(), socket.AF_INET, limit.wrap(factory))
        self.addCleanup(port.stopListening)
        limit.track(port)
        address = inherited.getsockname()
        yield self.check_second_waits(limiter, factory, lambda: socket.create_connection(address, timeout=5))


class BudgetDescriptionTests(SynchronousTestCase):
    """
    Tests for Budget.describe, the start-up and reload log line.
    """

    def test_describe(self):
        """The line gives every limit, and says when descriptors cut max_connections."""
        self.assertEqual(
            derive_budget(LimitsConfig(), 1024).describe(),
            "max_connections 480 (open-file limit 1024, 64 reserved), tls 480, http 120, admin 64",
        )
        self.assertTrue(
            derive_budget(LimitsConfig(max_connections=5000), 1024).describe().endswith(
                "; the descriptors allow only 480 TLS connections, which is where TLS stops"
            )
        )


class TLSEndpointTests(TestCase):
    """
    Tests for a capped ssl: listener (allowed for the Admin API), where
    Twisted's TLS factory wraps the limited one.
    """

    @inlineCallbacks
    def test_ssl_endpoint(self):
        """The second TLS client's handshake waits until the first connection closes."""
        from kongacme.listeners import ListenerSet
        from kongacme.testing import TestCA, write_certified_key
        from tests import tlsclients

        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        ca = TestCA.create()
        cafile = ca.write_ca(os.path.join(directory, "ca.pem"))
        cert, key = write_certified_key(ca.issue(["admin.test"]), directory, "admin")
        limiter = ConnectionLimiter(reactor, budget(admin=1))
        self.addCleanup(limiter.stop)
        factory = Factory.forProtocol(Held)
        factory.connected = []
        listeners = ListenerSet(reactor, "admin", factory, limiter.listener("admin"))
        errors = yield listeners.update(["ssl:0:interface=127.0.0.1:privateKey=%s:certKey=%s" % (key, cert)])
        self.assertEqual(errors, [])
        self.addCleanup(listeners.stop_all)
        port = listeners.ports()[0].getHost().port
        context = tlsclients.client_context(cafile)

        def open_first():
            raw = socket.create_connection(("127.0.0.1", port), timeout=10)
            tls = context.wrap_socket(raw, server_hostname="admin.test")
            tls.sendall(b"one")
            return tls, tls.recv(100)

        first, echo = yield deferToThread(open_first)
        self.addCleanup(first.close)
        self.assertEqual(echo, b"one")
        yield until(lambda: len(factory.connected) == 1)
        second = tlsclients.handshake(port, "admin.test", tlsclients.client_context(cafile), payload=b"two")
        for _ in range(20):
            yield deferLater(reactor, 0.01, lambda: None)
        self.assertFalse(second.called)
        self.assertEqual(len(factory.connected), 1)
        # Aborted: a TLS close would wait for the idle client's close_notify.
        factory.connected[0].transport.abortConnection()
        result = yield second
        self.assertEqual(result["echo"], b"two")
