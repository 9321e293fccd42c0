"""
Tests for a fleet: two real daemon processes sharing one real Redis and
one Pebble (kongacme.fleet, the shared http-01 tokens, the order lock).
"""

import os

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from tests import tlsclients
from tests.daemonproc import ShowsDaemonOutput, free_port
from tests.fleetnodes import redis_storage, start_nodes, vault_storage, write_root
from tests.pebble import PebbleFixture
from tests.baofixture import BaoServer
from tests.redisfixture import RedisServer


class Echo(Protocol):
    def dataReceived(self, data):
        self.transport.write(data)


class FleetNodesMixin(ShowsDaemonOutput):
    """
    Two daemon processes (a, b) on one shared store and one Pebble, which
    validates http-01 through node A only.

    :cvar pebble_options: for :meth:`PebbleFixture.start`.
    :cvar extra_config: merged into each node's configuration.
    """

    timeout = 120
    pebble_options: dict = {}
    extra_config: dict = {}

    @inlineCallbacks
    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        storage = yield self.start_storage()
        ports = {name: (free_port(), free_port(), free_port()) for name in ("a", "b")}
        # Pebble validates http-01 on node A's HTTP port only.
        self.pebble = yield PebbleFixture.start(self, ports["a"][1], **self.pebble_options)
        self.root = yield write_root(self.pebble, self.dir)
        upstream = reactor.listenTCP(0, Factory.forProtocol(Echo), interface="127.0.0.1")
        self.addCleanup(upstream.stopListening)
        self.nodes = yield Deferred.fromCoroutine(
            start_nodes(self, self.dir, ports, upstream.getHost().port, self.pebble, storage, self.extra_config)
        )

    @inlineCallbacks
    def start_storage(self):
        """Start the shared store; the ``acme`` fields that point at it."""
        self.redis = yield RedisServer.start(self)
        return redis_storage(self.redis)

    def tearDown(self):
        if os.environ.get("KONGACME_DEBUG_FLEET"):
            for name, (daemon, _) in self.nodes.items():
                print("=== node", name, "\n", daemon.output[-6000:])

    def orders(self, name, host):
        return self.nodes[name][0].output.count("ordering a certificate for %s " % (host,))


class RedisFleetTests(FleetNodesMixin, TestCase):
    """
    Tests for two nodes on one Redis: a certificate ordered through one is
    served by the other, and the CA's challenge is answered by whichever
    node it reaches.
    """

    @inlineCallbacks
    def test_issued_on_b_served_by_a(self):
        """B orders (A answers the CA's challenge from the shared store); A serves it within a second, no order of its own."""
        b = yield tlsclients.handshake(self.nodes["b"][1], "shared.fleet.test",
                                       tlsclients.client_context(self.root), payload=b"")
        self.assertEqual(b["names"], ["shared.fleet.test"])
        yield deferLater(reactor, 1.0, lambda: None)
        a = yield tlsclients.handshake(self.nodes["a"][1], "shared.fleet.test",
                                       tlsclients.client_context(self.root), payload=b"")
        self.assertEqual(a["names"], ["shared.fleet.test"])
        self.assertEqual((self.orders("a", "shared.fleet.test"), self.orders("b", "shared.fleet.test")), (0, 1))

    @inlineCallbacks
    def test_control_plane_orders_on_request_only(self):
        """A control-plane node (reloaded into that role) starts no order from a handshake but does on POST /acme; the data plane serves the result."""
        daemon_a, tls_a = self.nodes["a"]
        daemon_a.config["fleet"]["role"] = "control_plane"
        daemon_a.write()
        daemon_a.signal()
        yield daemon_a.wait_for("configuration reloaded")
        first = yield tlsclients.handshake(tls_a, "cp.fleet.test", tlsclients.client_context(), payload=b"")
        self.assertEqual(self.orders("a", "cp.fleet.test"), 0)
        self.assertNotEqual(first["names"], ["cp.fleet.test"])
        admin_a = daemon_a.config["listen"]["admin"][0].split(":")[1]
        out, err, code = yield tlsclients.run(
            "/usr/bin/curl", "-sS", "-d", "host=cp.fleet.test", "http://127.0.0.1:%s/acme" % (admin_a,)
        )
        self.assertIn(b"is created", out)
        yield deferLater(reactor, 1.0, lambda: None)
        served = yield tlsclients.handshake(self.nodes["b"][1], "cp.fleet.test",
                                            tlsclients.client_context(self.root), payload=b"")
        self.assertEqual(served["names"], ["cp.fleet.test"])
        self.assertEqual(self.orders("b", "cp.fleet.test"), 0)

    @inlineCallbacks
    def test_one_order_across_nodes(self):
        """Clients hitting both nodes at once for a new name cause exactly one order in the fleet."""
        clients = [
            tlsclients.handshake(self.nodes[name][1], "race.fleet.test", tlsclients.client_context(), payload=b"")
            for name in ("a", "b", "a", "b")
        ]
        yield gatherResults(clients)
        yield deferLater(reactor, 1.5, lambda: None)
        self.assertEqual(self.orders("a", "race.fleet.test") + self.orders("b", "race.fleet.test"), 1)
        for name in ("a", "b"):
            served = yield tlsclients.handshake(self.nodes[name][1], "race.fleet.test",
                                                tlsclients.client_context(self.root), payload=b"")
            self.assertEqual(served["names"], ["race.fleet.test"])


class VaultFleetTests(RedisFleetTests):
    """
    The same fleet tests with two nodes on one real OpenBao (Vault API).
    """

    @inlineCallbacks
    def start_storage(self):
        bao = yield BaoServer.start(self)
        return vault_storage(bao, "fleet")


class RedisFleetRenewalTests(FleetNodesMixin, TestCase):
    """
    Renewal in a fleet: Pebble issues 60-second certificates, both nodes
    check every 2 s; one node renews (the order lock), the other serves
    the result.
    """

    timeout = 180
    pebble_options = {"validity": 60}
    extra_config = {"renewal": {"check_interval": 2, "first_check": 1}}

    @inlineCallbacks
    def test_one_renewal_for_the_fleet(self):
        host = "renew.fleet.test"
        context = tlsclients.client_context(self.root)
        first = yield tlsclients.handshake(self.nodes["a"][1], host, context, payload=b"")
        serial = first["der"]
        # Both nodes serve it, then both serve one renewed certificate.
        deadline = reactor.seconds() + 90
        served = {}
        while reactor.seconds() < deadline:
            for name in ("a", "b"):
                result = yield tlsclients.handshake(self.nodes[name][1], host, context, payload=b"")
                self.assertEqual(result["names"], [host])
                served[name] = result["der"]
            if served["a"] != serial and served["a"] == served["b"]:
                break
            yield deferLater(reactor, 0.5, lambda: None)
        else:
            self.fail("not renewed on both nodes:\n" + self.nodes["a"][0].output[-3000:])
        renewals = sum(
            self.nodes[name][0].output.count("ordering a certificate for %s (renewal)" % (host,)) for name in "ab"
        )
        self.assertEqual(renewals, 1)
