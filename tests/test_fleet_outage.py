"""
Tests for a fleet under load and through a storage outage: three real
daemon processes sharing one real Redis (or one real OpenBao) and one
Pebble (kongacme.fleet, kongacme.issuance.manager, the storage providers).
"""

from __future__ import annotations

import os
import re

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import TestCase

from tests import tlsclients
from tests.baofixture import BaoServer
from tests.fleetnodes import redis_storage, start_nodes, vault_storage, write_root
from tests.daemonproc import ShowsDaemonOutput, free_port
from tests.pebble import PebbleFixture, settle
from tests.redisfixture import RedisServer

NODES = ("a", "b", "c")
#: New names hit on every node at once.
NAMES = 50
#: Seconds the storage stays down while every name is handshaken on every node.
OUTAGE = 30.0
#: Seconds a verified handshake may take (a first one is held while its order runs).
CLIENT_TIMEOUT = 90.0

# Matched loosely: the wording of the storage-outage lines is still moving.
OUTAGE_LINE = re.compile(r"storage\b.*\b(unavailable|unreachable|down)\b", re.IGNORECASE)
RECOVERY_LINE = re.compile(r"storage\b.*\b(reachable|available|resumed|recovered)\b", re.IGNORECASE)


class Echo(Protocol):
    def connectionMade(self):
        self.factory.open.add(self)

    def connectionLost(self, reason):
        self.factory.open.discard(self)

    def dataReceived(self, data):
        self.transport.write(data)


def until(condition, timeout: float, interval: float = 0.2):
    """Fires with True once ``condition()`` is true, or False after ``timeout`` seconds."""

    async def poll() -> bool:
        deadline = reactor.seconds() + timeout
        while not condition():
            if reactor.seconds() > deadline:
                return False
            await deferLater(reactor, interval, lambda: None)
        return True

    return Deferred.fromCoroutine(poll())


class RedisFleetOutageTests(ShowsDaemonOutput, TestCase):
    """
    Tests for three nodes on one Redis: fifty new names hit on every node at
    once cost fifty orders at the CA and are served everywhere; the names
    already served keep being served while Redis is down, and orders resume
    once it is back.
    """

    timeout = 600

    @inlineCallbacks
    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        storage = yield self.start_storage()
        ports = {name: (free_port(), free_port(), free_port()) for name in NODES}
        # Pebble validates http-01 on node A's HTTP port only; A answers
        # for every node from the tokens in the shared storage.
        self.pebble = yield PebbleFixture.start(self, ports["a"][1])
        self.root = yield write_root(self.pebble, self.dir)
        self.context = tlsclients.client_context(self.root)
        echo = Factory.forProtocol(Echo)
        echo.open = set()
        # Cleanups run last-first: this one after the daemons have stopped,
        # when their connections to the upstream are closing by themselves.
        self.addCleanup(self.close_upstream_connections, echo)
        upstream = reactor.listenTCP(0, echo, interface="127.0.0.1")
        self.addCleanup(upstream.stopListening)
        # Every name on every node at once: more client threads than the
        # reactor's default pool of 10.
        self.clients = ThreadPool(minthreads=0, maxthreads=NAMES * len(NODES), name="fleet-outage-clients")
        self.clients.start()
        self.addCleanup(self.clients.stop)
        self.nodes = yield Deferred.fromCoroutine(
            start_nodes(
                self,
                self.dir,
                ports,
                upstream.getHost().port,
                self.pebble,
                storage,
                issuance={
                    "request_timeout": 10,
                    "handshake_wait": 60,
                    # All fifty at once on each node, none refused.
                    "max_orders_in_flight": 2 * NAMES,
                    "orders_per_minute": 10 * NAMES,
                },
                fleet={"poll_interval": 0.2},
            )
        )

    @inlineCallbacks
    def start_storage(self):
        """Start the shared store; the ``acme`` fields that point at it."""
        self.redis = yield RedisServer.start(self)
        return redis_storage(self.redis)

    def take_down(self):
        """The outage: Redis stopped (saving its data, as a Redis with persistence)."""
        return self.redis.stop(save=True)

    def bring_back(self):
        """Redis started again on the same port, with its data."""
        return self.redis.restart()

    def tearDown(self):
        # Each node's whole log beside the test's other files, for a post-mortem.
        for name, (daemon, _) in self.nodes.items():
            with open(os.path.join(self.dir, "node-%s.log" % (name,)), "w") as f:
                f.write(daemon.output)
        with open(os.path.join(self.dir, "pebble.log"), "w") as f:
            f.write(self.pebble.output)

    # -- helpers ---------------------------------------------------------------

    @inlineCallbacks
    def close_upstream_connections(self, echo):
        """Wait (briefly) for proxied connections to close; abort what is left."""
        yield until(lambda: not echo.open, 5, 0.05)
        for protocol in list(echo.open):
            protocol.transport.abortConnection()
        yield settle()

    def verified(self, node: str, host: str):
        """
        A handshake with ``node`` for ``host`` verified against Pebble's
        root: fires with None if it presented ``host``'s certificate, else
        with a description of what went wrong.
        """
        d = deferToThreadPool(
            reactor, self.clients, tlsclients.handshake_blocking, self.nodes[node][1], host, self.context,
            payload=b"", timeout=CLIENT_TIMEOUT,
        )

        def checked(result):
            return None if result["names"] == [host] else "%s %s: served %r" % (node, host, result["names"])

        return d.addCallbacks(checked, lambda f: "%s %s: %s" % (node, host, f.getErrorMessage()))

    @inlineCallbacks
    def everywhere(self, hosts):
        """Every host on every node at once; the failures."""
        results = yield gatherResults([self.verified(node, host) for host in hosts for node in NODES])
        return [r for r in results if r is not None]

    def ca_orders(self) -> int:
        """Orders Pebble created (its log: one "Added order" line each)."""
        return self.pebble.output.count("Added order")

    def ca_issued(self) -> int:
        """Certificates Pebble issued (one "Issued certificate serial" line each)."""
        return self.pebble.output.count("Issued certificate serial")

    def pebble_stalled(self) -> bool:
        """Whether Pebble stopped answering: orders timed out and it issued fewer than asked."""
        timed_out = any("no complete answer within" in daemon.output for daemon, _ in self.nodes.values())
        return timed_out and self.ca_issued() < NAMES

    def daemon_orders(self) -> int:
        """Orders the nodes say they started, summed."""
        return sum(daemon.output.count("ordering a certificate for ") for daemon, _ in self.nodes.values())

    def lines(self, node: str, pattern: re.Pattern) -> list[str]:
        return [line for line in self.nodes[node][0].output.splitlines() if pattern.search(line)]

    @inlineCallbacks
    def issue_fifty(self):
        """Fifty new names on all three nodes at once: all served, fifty orders at the CA."""
        hosts = ["n%02d.fleet.test" % i for i in range(NAMES)]
        failures = yield self.everywhere(hosts)
        if failures and self.pebble_stalled():
            # Pebble 2.4's in-memory store can deadlock under concurrent
            # orders (seen here about once in ten bursts): it accepts
            # requests and never answers. That is the test CA failing, not
            # the fleet; start over once with a fresh Pebble, storage and
            # nodes, and hold the second attempt to every assertion.
            for daemon, _ in self.nodes.values():
                yield daemon.stop()
            yield self.setUp()
            failures = yield self.everywhere(hosts)
        by_node = {node: sum(f.startswith(node + " ") for f in failures) for node in NODES}
        self.assertFalse(failures, "failed handshakes per node: %r; first: %r" % (by_node, failures[:3]))
        # Pebble logs before it answers; give our reader of its output a moment.
        yield until(lambda: self.ca_issued() >= NAMES, 10)
        self.assertEqual((self.ca_orders(), self.ca_issued(), self.daemon_orders()), (NAMES, NAMES, NAMES))
        return hosts

    # -- tests -----------------------------------------------------------------

    @inlineCallbacks
    def test_fifty_names_then_storage_outage(self):
        """
        Fifty new names hit on all three nodes at once: exactly fifty orders
        at the CA and every node serves every certificate. Then the storage
        goes away for 30 s: every one of those names keeps handshaking on
        every node without a single failure, and each node logs the outage.
        Once the storage is back, each node logs that, and new names get
        certificates on every node again.
        """
        hosts = yield self.issue_fifty()

        yield self.take_down()
        failures, rounds = [], 0
        deadline = reactor.seconds() + OUTAGE
        while reactor.seconds() < deadline:
            failures += yield self.everywhere(hosts)
            rounds += 1
        self.assertFalse(failures, "%d handshakes failed during the outage; first: %r" % (len(failures), failures[:5]))
        self.assertGreater(rounds, 0)
        for node in NODES:
            self.assertTrue(self.lines(node, OUTAGE_LINE), "node %s logged no storage outage" % (node,))

        yield self.bring_back()
        recovered = yield until(lambda: all(self.lines(node, RECOVERY_LINE) for node in NODES), 60)
        self.assertTrue(recovered, {node: self.lines(node, OUTAGE_LINE) for node in NODES})

        # New names: the first tries may still meet a reconnecting client;
        # each name is retried on every node until served, generously.
        fresh = ["after%d.fleet.test" % i for i in range(3)]
        deadline = reactor.seconds() + 120
        pending = list(fresh)
        while pending and reactor.seconds() < deadline:
            failures = yield self.everywhere(pending)
            pending = sorted({f.split()[1] for f in failures})
            if pending:
                yield deferLater(reactor, 1.0, lambda: None)
        self.assertEqual(pending, [])
        self.assertEqual(self.ca_issued(), NAMES + len(fresh))


class VaultFleetOutageTests(RedisFleetOutageTests):
    """
    The same with three nodes on one real OpenBao (Vault API). The outage is
    the server frozen (SIGSTOP) for 30 s, then thawed: a dev server keeps
    its data in memory only, so a restart would come back empty.
    """

    @inlineCallbacks
    def start_storage(self):
        self.bao = yield BaoServer.start(self)
        return vault_storage(self.bao, "outage")

    def take_down(self):
        self.bao.pause()
        # Thawed even if the test fails half-way (stopping it needs that too).
        self.addCleanup(self.resume_once)
        return None

    def resume_once(self):
        if self.bao.running:
            try:
                self.bao.resume()
            except ProcessLookupError:
                pass

    def bring_back(self):
        self.bao.resume()
        return None
