"""
Tests for kongacme.fleet.propagation: two nodes sharing one store.
"""

from twisted.internet.defer import succeed
from twisted.internet.defer import fail
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from kongacme.config import IssuanceConfig
from kongacme.fleet.feed import IChangeFeed
from kongacme.fleet.propagation import CHANGED_PREFIX, FEED_POLL_INTERVAL, Propagator
from kongacme.issuance.admission import Admission
from kongacme.issuance.manager import CertificateManager
from kongacme.storage import keys
from kongacme.testing import FakeIssuer, MemoryStorage
from kongacme.tls.cache import CertificateCache
from kongacme.tls.fallback import generate_self_signed


from kongacme.storage.errors import StorageUnavailable  # noqa: E402


class DownableStorage(MemoryStorage):
    """Memory storage whose reads fail while ``down`` (an outage)."""

    down = False

    def list(self, prefix):
        if self.down:
            return fail(StorageUnavailable("down"))
        return super().list(prefix)

    def get(self, key):
        if self.down:
            return fail(StorageUnavailable("GET: Lost connection"))
        return super().get(key)


class FakeBus:
    """The channel fake feeds publish on (delivered at once, in process)."""

    def __init__(self):
        self.feeds = []

    def feed(self):
        feed = FakeFeed(self)
        self.feeds.append(feed)
        return feed


@implementer(IChangeFeed)
class FakeFeed:
    """An IChangeFeed on a FakeBus; ``disconnect``/``connect`` simulate outages."""

    def __init__(self, bus):
        self.bus = bus
        self.connected = False
        self.stopped = False
        self.published = []
        self._on_change = self._on_connected = None

    def start(self, on_change, on_connected):
        if self._on_change is not None:
            raise AssertionError("started twice")
        self._on_change, self._on_connected = on_change, on_connected
        self.connect()

    def connect(self):
        self.connected = True
        self._on_connected()

    def disconnect(self):
        self.connected = False

    def publish(self, host, fingerprint):
        self.published.append((host, fingerprint))
        for feed in self.bus.feeds:
            if feed.connected:
                feed._on_change(host, fingerprint)
        return succeed(None)

    def stop(self):
        self.connected = False
        self.stopped = True
        return succeed(None)


class Node:
    """A node's cache, manager and propagator on a shared store."""

    def __init__(self, storage, clock, issuer, feed=None):
        self.cache = CertificateCache(generate_self_signed())
        self.manager = CertificateManager(self.cache, storage, issuer, clock, Admission(["*.fleet.test"]),
                                          IssuanceConfig())
        self.propagator = Propagator(storage, self.cache, clock, poll_interval=1.0, full_sync_interval=300.0,
                                     feed=feed)
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


class PropagatorFeedTests(SynchronousTestCase):
    """
    Tests for Propagator with a change feed (a fake; the Redis one is
    tested in tests.test_fleet_redis_feed).
    """

    def setUp(self):
        self.clock = Clock()
        self.storage = DownableStorage(self.clock)
        self.issuer = FakeIssuer()
        self.bus = FakeBus()
        self.a = Node(self.storage, self.clock, self.issuer, self.bus.feed())
        self.b = Node(self.storage, self.clock, self.issuer, self.bus.feed())
        self.addCleanup(self.a.propagator.stop)
        self.addCleanup(self.b.propagator.stop)

    def write_quietly(self, host):
        """A certificate stored with a marker but no message (a lost one)."""
        certified = self.issuer.ca.issue([host])
        self.successResultOf(self.storage.set(keys.cert_key(host), keys.encode_cert_key(certified)))
        self.successResultOf(self.storage.set(CHANGED_PREFIX + host, certified.fingerprint.encode(), 120))
        return certified

    def test_fake_verifies(self):
        """The fake feed is an IChangeFeed."""
        self.assertTrue(verifyObject(IChangeFeed, self.bus.feeds[0]))

    def test_message_loads_at_once(self):
        """With a feed, the other node holds the certificate with no time passing (no poll)."""
        certified = self.successResultOf(self.a.manager.obtain("push.fleet.test"))
        self.assertEqual(self.a.propagator._feed.published, [("push.fleet.test", certified.fingerprint)])
        self.assertEqual(self.b.cache.lookup("push.fleet.test").fingerprint, certified.fingerprint)
        # The marker is still written, for nodes that missed the message.
        self.assertEqual(self.successResultOf(self.storage.list(CHANGED_PREFIX)), [CHANGED_PREFIX + "push.fleet.test"])

    def test_polls_slow_while_connected(self):
        """
        While the feed is connected, markers are polled every
        FEED_POLL_INTERVAL seconds rather than every poll_interval.
        """
        certified = self.write_quietly("lost.fleet.test")
        self.clock.advance(FEED_POLL_INTERVAL - 1)
        self.assertIs(self.b.cache.lookup("lost.fleet.test"), self.b.cache.fallback)
        self.clock.advance(1)
        self.assertEqual(self.b.cache.lookup("lost.fleet.test").fingerprint, certified.fingerprint)

    def test_polls_fast_while_disconnected(self):
        """When the feed is lost, polls run every poll_interval again."""
        self.b.propagator._feed.disconnect()
        certified = self.write_quietly("down.fleet.test")
        self.clock.advance(1.0)
        self.assertEqual(self.b.cache.lookup("down.fleet.test").fingerprint, certified.fingerprint)

    def test_reconnect_catches_up(self):
        """A change announced while the feed was down is loaded as soon as it reconnects."""
        feed = self.b.propagator._feed
        feed.disconnect()
        certified = self.successResultOf(self.a.manager.obtain("gap.fleet.test"))
        self.assertIs(self.b.cache.lookup("gap.fleet.test"), self.b.cache.fallback)
        feed.connect()
        self.assertEqual(self.b.cache.lookup("gap.fleet.test").fingerprint, certified.fingerprint)

    def test_unknown_or_broken_host_ignored(self):
        """
        A message for a host with no stored certificate, or a corrupt one,
        changes nothing and raises nothing.
        """
        self.successResultOf(self.storage.set(keys.cert_key("bad.fleet.test"), b"{not json"))
        feed = self.a.propagator._feed
        feed.publish("none.fleet.test", "AB:" * 19 + "AB")
        feed.publish("bad.fleet.test", "AB:" * 19 + "AB")
        self.assertIsNone(self.b.cache.get("none.fleet.test"))
        self.assertIsNone(self.b.cache.get("bad.fleet.test"))

    def test_storage_gone_when_message_arrives(self):
        """
        A message arriving while storage cannot be read is the storage-down
        warning (once), not an error with a traceback; the certificate is
        loaded once storage is back.
        """
        from twisted.logger import Logger

        events = []
        self.b.propagator.log = Logger(observer=events.append)
        certified = self.write_quietly("late.fleet.test")
        self.storage.down = True
        self.b.propagator._changed("late.fleet.test", certified.fingerprint)
        self.b.propagator._changed("late.fleet.test", certified.fingerprint)
        self.assertEqual([e["log_level"].name for e in events], ["warn"])
        self.assertIn("storage unavailable", events[0]["log_format"])
        self.storage.down = False
        self.clock.advance(30)
        self.assertEqual(self.b.cache.lookup("late.fleet.test").fingerprint, certified.fingerprint)

    def test_stop_stops_feed(self):
        """stop() closes the feed."""
        self.successResultOf(self.b.propagator.stop())
        self.assertTrue(self.b.propagator._feed.stopped)
