"""
Tests for kongacme.listeners: listener sets follow the configured endpoint
strings, new endpoints open before old ones close, and a set that cannot
open one of them keeps every listener it had.
"""

from __future__ import annotations

import select
import socket
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from kongacme.listeners import DEFAULT_BACKLOG, ListenError, ListenerSet, update_listeners, with_default_backlog
from tests.daemonproc import free_port


def endpoint(port: int) -> str:
    return "tcp:%d:interface=127.0.0.1" % (port,)


def accepts(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:``port``."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return True
    except OSError:
        return False


def occupy(test) -> int:
    """A port held by a listening socket of the test (closed at cleanup)."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    test.addCleanup(holder.close)
    return holder.getsockname()[1]


class ListenerSetTests(TestCase):
    """
    Tests for ListenerSet and update_listeners with real TCP ports.
    """

    def make(self, kind="tls") -> ListenerSet:
        listener_set = ListenerSet(reactor, kind, Factory.forProtocol(Protocol))
        self.addCleanup(listener_set.stop_all)
        return listener_set

    @inlineCallbacks
    def test_move(self):
        """Moving to a free port listens there and closes the old port."""
        listeners = self.make()
        old, new = free_port(), free_port()
        errors = yield listeners.update([endpoint(old)])
        self.assertEqual(errors, [])
        errors = yield listeners.update([endpoint(new)])
        self.assertEqual(errors, [])
        self.assertEqual(listeners.descriptions, [endpoint(new)])
        self.assertTrue(accepts(new))
        self.assertFalse(accepts(old))

    @inlineCallbacks
    def test_move_to_busy_port_keeps_old(self):
        """
        Moving to a port already taken fails with the reason, and the old
        listener keeps listening (it is closed only after the new one
        opened).
        """
        listeners = self.make()
        old = free_port()
        yield listeners.update([endpoint(old)])
        busy = occupy(self)
        errors = yield listeners.update([endpoint(busy)])
        self.assertEqual(len(errors), 1)
        self.assertIsInstance(errors[0], ListenError)
        self.assertEqual(errors[0].description, endpoint(busy))
        self.assertIn("Address already in use", str(errors[0]))
        self.assertEqual(listeners.descriptions, [endpoint(old)])
        self.assertTrue(accepts(old))

    @inlineCallbacks
    def test_partial_failure_opens_nothing(self):
        """
        When one of several new endpoints fails, the ones opened beside it
        are closed again, in this set and in the others updated together.
        """
        tls, admin = self.make("tls"), self.make("admin")
        tls_old, admin_old = free_port(), free_port()
        yield update_listeners([(tls, [endpoint(tls_old)]), (admin, [endpoint(admin_old)])])
        tls_new, admin_new, busy = free_port(), free_port(), occupy(self)
        errors = yield update_listeners([
            (tls, [endpoint(tls_new)]),
            (admin, [endpoint(admin_new), endpoint(busy)]),
        ])
        self.assertEqual([e.description for e in errors], [endpoint(busy)])
        self.assertEqual(tls.descriptions, [endpoint(tls_old)])
        self.assertEqual(admin.descriptions, [endpoint(admin_old)])
        for port in (tls_old, admin_old):
            self.assertTrue(accepts(port))
        for port in (tls_new, admin_new):
            self.assertFalse(accepts(port))

    @inlineCallbacks
    def test_unparsable_endpoint(self):
        """An endpoint string that does not parse is an error, not an exception."""
        listeners = self.make()
        errors = yield listeners.update(["nonsense:1"])
        self.assertEqual([e.description for e in errors], ["nonsense:1"])
        self.assertEqual(listeners.descriptions, [])

    @inlineCallbacks
    def test_unchanged_endpoint_kept(self):
        """An endpoint in both configurations keeps its port object (no re-bind)."""
        listeners = self.make()
        kept, added = free_port(), free_port()
        yield listeners.update([endpoint(kept)])
        before = listeners.ports()[0]
        yield listeners.update([endpoint(kept), endpoint(added)])
        self.assertIn(before, listeners.ports())
        self.assertEqual(len(listeners.ports()), 2)

    def test_prepare_twice(self):
        """prepare() without commit() or abort() in between is a programming error."""
        listeners = self.make()
        listeners.prepare([])
        self.assertRaises(RuntimeError, listeners.prepare, [])
        listeners.abort()


class Counting(Factory):
    """Counts the connections it is asked to serve."""

    protocol = Protocol

    def __init__(self):
        self.built = 0

    def buildProtocol(self, addr):
        self.built += 1
        return super().buildProtocol(addr)


class HandedOverTests(TestCase):
    """
    Tests for a ListenerSet whose sockets other processes accept on (the
    master's TLS sockets with workers): opened but not read, and removed
    ones kept open until closed on purpose.
    """

    def make(self, factory=None) -> ListenerSet:
        listener_set = ListenerSet(
            reactor, "tls", factory or Factory.forProtocol(Protocol), accepting=False, defer_close=True
        )
        self.addCleanup(listener_set.stop_all)
        return listener_set

    @inlineCallbacks
    def test_not_accepting(self):
        """A connection waits in the kernel's queue: the set never accepts it."""
        factory = Counting()
        listeners = self.make(factory)
        port = free_port()
        self.assertEqual((yield listeners.update([endpoint(port)])), [])
        client = socket.create_connection(("127.0.0.1", port), timeout=2)
        self.addCleanup(client.close)
        for _ in range(5):
            yield deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(factory.built, 0)

    @inlineCallbacks
    def completed(self, description: str, port: int, attempts: int) -> Any:
        """Of ``attempts`` connects to a listener that does not accept, how many the kernel completes."""
        listeners = self.make(Counting())
        self.assertEqual((yield listeners.update([description])), [])
        clients = []
        for _ in range(attempts):
            client = socket.socket()
            client.setblocking(False)
            self.addCleanup(client.close)
            client.connect_ex(("127.0.0.1", port))
            clients.append(client)
        done = 0
        for _ in range(50):
            yield deferLater(reactor, 0.02, lambda: None)
            done = len(select.select([], clients, [], 0)[1])
            if done == attempts:
                break
        return done

    @inlineCallbacks
    def test_default_backlog(self):
        """
        A tcp: endpoint without backlog= listens with DEFAULT_BACKLOG, not
        Twisted's 50: 200 clients the set does not accept yet all get
        connected (with 50 the kernel would drop the SYNs of ~150); one that
        sets backlog= keeps it.
        """
        port = free_port()
        self.assertEqual((yield self.completed(endpoint(port), port, 200)), 200)
        other = free_port()
        self.assertLess((yield self.completed(endpoint(other) + ":backlog=10", other, 200)), 50)

    @inlineCallbacks
    def test_removed_kept_until_closed(self):
        """
        A reload's removed endpoint leaves the set but stays open in
        ``unlisted`` until close_unlisted; stop_all closes it too.
        """
        listeners = self.make()
        old, new = free_port(), free_port()
        yield listeners.update([endpoint(old)])
        yield listeners.update([endpoint(new)])
        self.assertEqual(listeners.descriptions, [endpoint(new)])
        self.assertEqual(list(listeners.unlisted), [endpoint(old)])
        self.assertTrue(accepts(old))
        yield listeners.close_unlisted([endpoint(old)])
        self.assertEqual(listeners.unlisted, {})
        self.assertFalse(accepts(old))
        yield listeners.update([endpoint(old)])
        yield listeners.stop_all()
        self.assertFalse(accepts(old) or accepts(new))

    @inlineCallbacks
    def test_listed_again(self):
        """
        An unlisted endpoint listed again is the same socket (no second
        bind); a reload aborted meanwhile puts it back in ``unlisted``.
        """
        listeners = self.make()
        old, new = free_port(), free_port()
        yield listeners.update([endpoint(old)])
        first = listeners.ports()[0]
        yield listeners.update([endpoint(new)])
        busy = occupy(self)
        errors = yield listeners.update([endpoint(old), endpoint(busy)])
        self.assertEqual([e.description for e in errors], [endpoint(busy)])
        self.assertEqual(listeners.unlisted, {endpoint(old): first})
        self.assertEqual((yield listeners.update([endpoint(old), endpoint(new)])), [])
        self.assertEqual(listeners.unlisted, {})
        self.assertIn(first, listeners.ports())
        self.assertTrue(accepts(old))


class DefaultBacklogTests(TestCase):
    """Tests for with_default_backlog."""

    def test_descriptions(self):
        """TCP and UNIX endpoints without backlog= get DEFAULT_BACKLOG (also behind haproxy:); others stay."""
        b = ":backlog=%d" % DEFAULT_BACKLOG
        for given, expected in [
            ("tcp:443", "tcp:443" + b),
            ("tcp6:443:interface=\\:\\:1", "tcp6:443:interface=\\:\\:1" + b),
            ("tcp:port=443", "tcp:port=443" + b),
            ("haproxy:tcp:443", "haproxy:tcp:443" + b),
            ("unix:/run/kongacme.sock", "unix:/run/kongacme.sock" + b),
            ("tcp:443:backlog=10", "tcp:443:backlog=10"),
            ("systemd:domain=INET:index=0", "systemd:domain=INET:index=0"),
        ]:
            self.assertEqual(with_default_backlog(given), expected)
