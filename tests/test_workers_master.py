"""
Tests for kongacme.workers.master's handling of a reload that changes
``listen.tls``: real listening sockets, fake worker processes. A socket the
reload removed stays open while a worker of the previous generation may
still accept on it, and closes once none does.
"""

from __future__ import annotations

import os
import socket

import attrs
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from kongacme.config import parse_config
from kongacme.testing import TestCA
from kongacme.tls.cache import CertificateCache
from kongacme.workers.master import WorkerMode
from tests.daemonproc import free_port
from tests.test_workers_channel import FakeDaemon


@attrs.define(eq=False)
class FakeWorker:
    """A worker process the test drives: it accepts, drains and ends when told."""

    slot: int
    listening: list
    pid: int | None = None
    ended: Deferred = attrs.field(factory=Deferred)
    accepting: Deferred = attrs.field(factory=Deferred)
    drained: float | None = None

    def drain(self, deadline):
        self.drained = deadline
        done = Deferred()
        self.ended.addBoth(lambda result: done.callback(None) or result)
        return done

    def end(self):
        self.ended.callback("exited with status 0")


def config(*ports):
    return parse_config(
        {"workers": 2, "listen": {"tls": ["tcp:%d:interface=127.0.0.1" % (port,) for port in ports]}}, "/tmp"
    )


def accepts(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return True
    except OSError:
        return False


class ListenerReloadTests(TestCase):
    """
    Tests for WorkerMode.reconfigure with changed TLS listeners.
    """

    @inlineCallbacks
    def setUp(self):
        self.old_port, self.new_port = free_port(), free_port()
        self.daemon = FakeDaemon(config(self.old_port), CertificateCache(TestCA.create().issue(["fb.invalid"])), None)
        self.workers = []
        self.mode = WorkerMode(self.daemon, reactor, spawn=self.spawn)
        self.addCleanup(self.mode.listeners.stop_all)
        yield self.mode.listeners.update(self.daemon.config.listen.tls)
        self.mode.start()
        self.mode.supervisor.startService()

    def spawn(self, reactor, slot, listening, make_channel):
        worker = FakeWorker(slot, listening, pid=1000 + len(self.workers))
        self.workers.append(worker)
        return worker

    def inherited_ports(self, worker):
        """The TCP ports of the sockets a worker was given."""
        ports = []
        for fd, family, proxied in worker.listening:
            with socket.socket(fileno=os.dup(fd)) as probe:
                ports.append(probe.getsockname()[1])
        return ports

    @inlineCallbacks
    def reload(self, *ports):
        new = config(*ports)
        errors = yield self.mode.listeners.update(new.listen.tls)
        self.assertEqual(errors, [])
        self.mode.reconfigure(new)

    @inlineCallbacks
    def test_removed_socket_closes_once_no_old_worker_accepts(self):
        """
        Moving to another port: a new generation gets the new socket only;
        the old socket stays open until both old workers stopped accepting
        (one drained, one ended), then closes.
        """
        old1, old2 = self.workers
        self.assertEqual(self.inherited_ports(old1), [self.old_port])
        yield self.reload(self.new_port)
        new1, new2 = self.workers[2:]
        self.assertEqual(self.inherited_ports(new1), [self.new_port])
        self.assertTrue(accepts(self.old_port))
        new1.accepting.callback(None)
        self.assertEqual((old1.drained, old2.drained), (10.0, None))
        self.mode.stopped_accepting(old1)
        yield deferLater(reactor, 0, lambda: None)
        self.assertTrue(accepts(self.old_port))
        old2.end()
        yield deferLater(reactor, 0, lambda: None)
        self.assertFalse(accepts(self.old_port))
        self.assertTrue(accepts(self.new_port))
        self.assertEqual(self.mode.listeners.unlisted, {})

    @inlineCallbacks
    def test_kept_socket_and_listed_again(self):
        """
        Adding a port keeps the first one for the new generation; removing
        and listing it again before the old workers stopped accepting keeps
        it open for good (it is the newest generation's).
        """
        yield self.reload(self.old_port, self.new_port)
        self.assertEqual(sorted(self.inherited_ports(self.workers[2])), sorted([self.old_port, self.new_port]))
        yield self.reload(self.new_port)
        yield self.reload(self.old_port, self.new_port)
        for worker in self.workers[:4]:
            self.mode.stopped_accepting(worker)
            worker.end()
        yield deferLater(reactor, 0, lambda: None)
        self.assertTrue(accepts(self.old_port))
        self.assertEqual(sorted(self.mode.listeners.descriptions), sorted(config(self.old_port, self.new_port).listen.tls))

    @inlineCallbacks
    def test_same_endpoints_reordered(self):
        """The same endpoints in another order start no new generation."""
        yield self.reload(self.old_port, self.new_port)
        count = len(self.workers)
        yield self.reload(self.new_port, self.old_port)
        self.assertEqual(len(self.workers), count)
