"""
Tests for kongacme.fleet.propagation: two nodes sharing one store.
"""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from kongacme.config import IssuanceConfig
from kongacme.fleet.propagation import CHANGED_PREFIX, Propagator
from kongacme.issuance.admission import Admission
from kongacme.issuance.manager import CertificateManager
from kongacme.storage import keys
from kongacme.testing import FakeIssuer, MemoryStorage
from kongacme.tls.cache import CertificateCache
from kongacme.tls.fallback import generate_self_signed


class DownableStorage(MemoryStorage):
    """Memory storage whose reads fail while ``down`` (an outage)."""

    down = False

    def list(self, prefix):
        if self.down:
            from twisted.internet.defer import fail

            from kongacme.storage.errors import StorageUnavailable

            return fail(StorageUnavailable("down"))
        return super().list(prefix)


class Node:
    """A node's cache, manager and propagator on a shared store."""

    def __init__(self, storage, clock, issuer):
        self.cache = CertificateCache(generate_self_signed())
        self.manager = CertificateManager(self.cache, storage, issuer, clock, Admission(["*.fleet.test"]),
                                          IssuanceConfig())
        self.propagator = Propagator(storage, self.cache, clock, poll_interval=1.0, full_sync_interval=300.0)
        self.manager.on_stored = self.propagator.announce
        self.propagator.start()


class PropagatorTests(SynchronousTestCase):
    """
    Tests for Propagator.
    """

    def setUp(self):
        self.clock = Clock()
        self.storage = DownableStorage(self.clock)
        self.issuer = FakeIssuer()
        self.a = Node(self.storage, self.clock, self.issuer)
        self.b = Node(self.storage, self.clock, self.issuer)
        self.addCleanup(self.a.propagator.stop)
        self.addCleanup(self.b.propagator.stop)

    def test_issued_on_one_served_by_other_within_a_poll(self):
        """A certificate issued on node A is in node B's cache one poll interval later."""
        certified = self.successResultOf(self.a.manager.obtain("www.fleet.test"))
        self.assertIs(self.b.cache.lookup("www.fleet.test"), self.b.cache.fallback)
        self.clock.advance(1.0)
        self.assertEqual(self.b.cache.lookup("www.fleet.test").fingerprint, certified.fingerprint)
        self.assertEqual(self.issuer.requests, ["www.fleet.test"])

    def test_renewal_replaces(self):
        """A newer certificate for a host replaces the older one on the other node."""
        self.successResultOf(self.a.manager.obtain("r.fleet.test"))
        self.clock.advance(1.0)
        newer = self.successResultOf(self.a.manager.obtain("r.fleet.test", force=True))
        self.clock.advance(1.0)
        self.assertEqual(self.b.cache.lookup("r.fleet.test").fingerprint, newer.fingerprint)

    def test_full_sync_picks_up_kong_writes(self):
        """A certificate a Kong node stored (no marker) arrives with the full sync."""
        kong_cert = self.issuer.ca.issue(["kong.fleet.test"])
        self.successResultOf(self.storage.set(keys.cert_key("kong.fleet.test"), keys.encode_cert_key(kong_cert)))
        self.clock.advance(1.0)
        self.assertIs(self.b.cache.lookup("kong.fleet.test"), self.b.cache.fallback)
        self.clock.advance(300.0)
        self.assertEqual(self.b.cache.lookup("kong.fleet.test").fingerprint, kong_cert.fingerprint)

    def test_markers_expire(self):
        """Change markers are short-lived: they do not accumulate in storage."""
        self.successResultOf(self.a.manager.obtain("m.fleet.test"))
        self.assertEqual(len(self.successResultOf(self.storage.list(CHANGED_PREFIX))), 1)
        self.clock.advance(121)
        self.assertEqual(self.successResultOf(self.storage.list(CHANGED_PREFIX)), [])

    def test_storage_down_keeps_serving(self):
        """When the store fails, polls log one line and the node keeps what it holds; it recovers by itself."""
        self.successResultOf(self.a.manager.obtain("d.fleet.test"))
        self.clock.advance(1.0)
        held = self.b.cache.lookup("d.fleet.test")
        self.storage.down = True
        self.clock.advance(5.0)
        self.assertIs(self.b.cache.lookup("d.fleet.test"), held)
        self.storage.down = False
        self.successResultOf(self.a.manager.obtain("e.fleet.test"))
        self.clock.advance(1.0)
        self.assertEqual(self.b.cache.lookup("e.fleet.test").names, ("e.fleet.test",))
