"""
Tests for kongacme.issuance.manager.
"""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from kongacme.config import IssuanceConfig
from kongacme.errors import AcmeProblem, BackoffActive, NotAdmitted, OrderInProgress
from kongacme.interfaces import IHandshakeGate
from kongacme.issuance.admission import Admission
from kongacme.issuance.manager import CertificateManager
from kongacme.storage import keys
from kongacme.testing import FakeIssuer, MemoryStorage
from kongacme.tls.cache import CertificateCache
from kongacme.tls.fallback import generate_self_signed


def set_up_world(test) -> None:
    """Give ``test`` a Clock at a fixed time, memory storage, a cache and a fake issuer."""
    test.clock = Clock()
    test.clock.advance(1_800_000_000)
    test.storage = MemoryStorage(test.clock)
    test.cache = CertificateCache(generate_self_signed())
    test.issuer = FakeIssuer()


class CertificateManagerTests(SynchronousTestCase):
    """
    Tests for CertificateManager with a fake issuer, memory storage and a Clock.
    """

    def setUp(self):
        set_up_world(self)
        self.settings = IssuanceConfig(handshake_wait=5.0, orders_per_minute=3, max_orders_in_flight=2)
        self.manager = self.make()

    def make(self, **settings):
        import attrs

        return CertificateManager(
            self.cache,
            self.storage,
            self.issuer,
            self.clock,
            Admission(["*.example.test", "a.test"]),
            attrs.evolve(self.settings, **settings),
            fail_backoff_minutes=5,
        )

    def test_interface(self):
        """The manager is the TLS layer's handshake gate."""
        self.assertTrue(verifyObject(IHandshakeGate, self.manager))

    def test_obtain_stores_under_kong_keys_and_caches(self):
        """A successful order fills the cache and storage (cert_key, renew_config), and drops the lock."""
        certified = self.successResultOf(self.manager.obtain("a.test"))
        self.assertIs(self.cache.lookup("a.test"), certified)
        stored = self.successResultOf(self.storage.get(keys.cert_key("a.test")))
        self.assertEqual(keys.decode_cert_key(stored, "x").fingerprint, certified.fingerprint)
        renew = keys.decode_renew_config(self.successResultOf(self.storage.get(keys.renew_config("a.test"))))
        self.assertEqual(renew.host, "a.test")
        self.assertIsNone(self.successResultOf(self.storage.get(keys.update_lock("a.test"))))

    def test_not_admitted(self):
        """A host outside domains is refused without an order."""
        failure = self.failureResultOf(self.manager.obtain("b.test"), NotAdmitted)
        self.assertIn("host is not included in plugin config.domains", failure.value.message)
        self.assertEqual(self.issuer.requests, [])

    def test_single_flight(self):
        """Twenty concurrent requests for one host share one order."""
        self.issuer.hold = True
        results = [self.manager.obtain("x.example.test") for _ in range(20)]
        self.assertEqual(self.issuer.requests, ["x.example.test"])
        self.issuer.release()
        certs = {self.successResultOf(d).fingerprint for d in results}
        self.assertEqual(len(certs), 1)

    def test_failure_backoff(self):
        """A failed order writes Kong's backoff key; the next request gets Kong's message until it expires."""
        self.issuer.fail_with = AcmeProblem("urn:ietf:params:acme:error:rejectedIdentifier", "blocked", 400)
        self.failureResultOf(self.manager.obtain("a.test"), AcmeProblem)
        self.assertIsNotNone(self.successResultOf(self.storage.get(keys.fail_backoff("a.test"))))
        failure = self.failureResultOf(self.manager.obtain("a.test"), BackoffActive)
        self.assertEqual(
            failure.value.message,
            "please try again in 300 seconds for host a.test because of previous failure; "
            "this is configurable with config.fail_backoff_minutes",
        )
        self.assertEqual(len(self.issuer.requests), 1)
        self.clock.advance(301)
        self.issuer.fail_with = None
        self.successResultOf(self.manager.obtain("a.test"))
        self.assertEqual(len(self.issuer.requests), 2)

    def test_retry_after_extends_backoff(self):
        """A rate-limit problem with Retry-After longer than the backoff is honoured."""
        self.issuer.fail_with = AcmeProblem("urn:ietf:params:acme:error:rateLimited", "slow down", 429, retry_after=3600)
        self.failureResultOf(self.manager.obtain("a.test"), AcmeProblem)
        self.clock.advance(301)
        self.failureResultOf(self.manager.obtain("a.test"), BackoffActive)

    def test_lock_held_elsewhere(self):
        """When another process holds Kong's update lock, the answer says so honestly."""
        self.successResultOf(self.storage.add(keys.update_lock("a.test"), b"placeholder", 30))
        self.failureResultOf(self.manager.obtain("a.test"), OrderInProgress)
        self.assertEqual(self.issuer.requests, [])

    def test_found_in_storage(self):
        """A valid certificate already in storage (another node's) is used, no new order."""
        certified = self.issuer.ca.issue(["a.test"])
        self.successResultOf(self.storage.set(keys.cert_key("a.test"), keys.encode_cert_key(certified)))
        got = self.successResultOf(self.manager.obtain("a.test"))
        self.assertEqual(got.fingerprint, certified.fingerprint)
        self.assertEqual(self.issuer.requests, [])

    def test_gate_holds_until_issued(self):
        """An admitted name without a certificate is held until its order finishes."""
        self.issuer.hold = True
        waiting = self.manager.before_handshake("new.example.test")
        self.assertNoResult(waiting)
        self.issuer.release()
        self.successResultOf(waiting)
        self.assertEqual(self.cache.lookup("new.example.test").names, ("new.example.test",))

    def test_gate_wait_bounded(self):
        """A held handshake goes ahead after handshake_wait even if the order is still running."""
        self.issuer.hold = True
        waiting = self.manager.before_handshake("slow.example.test")
        self.clock.advance(4.9)
        self.assertNoResult(waiting)
        self.clock.advance(0.2)
        self.successResultOf(waiting)
        self.assertTrue(self.manager.in_progress("slow.example.test"))

    def test_gate_fallback_mode(self):
        """With first_handshake: fallback the handshake is not held, but the order starts."""
        manager = self.make(first_handshake="fallback")
        self.issuer.hold = True
        self.assertIsNone(manager.before_handshake("bg.example.test"))
        self.assertEqual(self.issuer.requests, ["bg.example.test"])

    def test_gate_ignores(self):
        """No SNI, a cached name, a non-admitted name, or on_demand off: no order, no hold."""
        self.cache.put(self.issuer.ca.issue(["a.test"]))
        self.assertIsNone(self.manager.before_handshake(None))
        self.assertIsNone(self.manager.before_handshake("a.test"))
        self.assertIsNone(self.manager.before_handshake("evil.test"))
        self.assertIsNone(self.make(on_demand=False).before_handshake("z.example.test"))
        self.assertEqual(self.issuer.requests, [])

    def test_rate_limits(self):
        """Orders from handshakes are capped in flight and per minute; refused names get no order."""
        self.issuer.hold = True
        self.manager.before_handshake("n1.example.test")
        self.manager.before_handshake("n2.example.test")
        self.assertIsNone(self.manager.before_handshake("n3.example.test"))  # 2 in flight
        self.assertEqual(len(self.issuer.requests), 2)
        self.issuer.release()
        self.manager.before_handshake("n4.example.test")
        self.assertIsNone(self.manager.before_handshake("n5.example.test"))  # 3 this minute
        self.assertEqual(len(self.issuer.requests), 3)
        self.issuer.release()
        self.clock.advance(61)
        self.manager.before_handshake("n5.example.test")
        self.assertEqual(len(self.issuer.requests), 4)

    def test_load_from_storage_skips_corrupt(self):
        """Stored certificates are loaded into the cache at start; corrupt ones are reported and skipped."""
        good = self.issuer.ca.issue(["good.test"])
        self.successResultOf(self.storage.set(keys.cert_key("good.test"), keys.encode_cert_key(good)))
        self.successResultOf(self.storage.set(keys.cert_key("bad.test"), b'{"key": "-----BEGIN', None))
        self.successResultOf(self.storage.set(keys.cert_key("json.test"), b"not json"))
        from twisted.logger import Logger

        from kongacme.issuance import stored

        events = []
        self.patch(stored, "log", Logger(observer=events.append))
        self.assertEqual(self.successResultOf(self.manager.load_from_storage()), 1)
        self.assertEqual(self.cache.lookup("good.test").fingerprint, good.fingerprint)
        self.assertIs(self.cache.lookup("bad.test"), self.cache.fallback)
        reported = sorted(e["key"] for e in events if e["log_level"].name == "warn")
        self.assertEqual(reported, [keys.cert_key("bad.test"), keys.cert_key("json.test")])


class OrderLockTests(SynchronousTestCase):
    """
    Tests for the order lock: a lease renewed for the whole order.
    """

    def setUp(self):
        self.clock = Clock()
        self.storage = MemoryStorage(self.clock)
        self.issuer = FakeIssuer()
        self.issuer.hold = True
        self.manager = CertificateManager(
            CertificateCache(generate_self_signed()), self.storage, self.issuer, self.clock,
            Admission(["a.test"]), IssuanceConfig(),
        )

    def test_lock_held_for_long_order(self):
        """An order running ten times Kong's 30 s lock TTL still holds the lock; it is released after."""
        d = self.manager.obtain("a.test")
        for _ in range(30):
            self.clock.advance(10)
            self.assertIsNotNone(self.successResultOf(self.storage.get(keys.update_lock("a.test"))))
            self.assertFalse(self.successResultOf(self.storage.add(keys.update_lock("a.test"), b"placeholder", 30)))
        self.issuer.release()
        self.successResultOf(d)
        self.assertIsNone(self.successResultOf(self.storage.get(keys.update_lock("a.test"))))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_lock_not_released_when_lost(self):
        """If the lease expired and another node took the lock, finishing does not delete the other's lock."""
        d = self.manager.obtain("a.test")
        # Simulate a storage outage long enough for the lease to lapse, and another owner.
        self.successResultOf(self.storage.delete(keys.update_lock("a.test")))
        self.successResultOf(self.storage.add(keys.update_lock("a.test"), b"other-owner", 300))
        self.clock.advance(10)  # renewal fails: logged, order goes on
        self.issuer.release()
        self.successResultOf(d)
        self.assertEqual(self.successResultOf(self.storage.get(keys.update_lock("a.test"))), b"other-owner")


class FlakyStorage(MemoryStorage):
    """Memory storage whose writes of certificates fail while ``down``."""

    down = False

    def set(self, key, value, ttl=None):
        if self.down and key.startswith(keys.CERT_KEY_PREFIX):
            from twisted.internet.defer import fail

            from kongacme.storage.errors import StorageUnavailable

            return fail(StorageUnavailable("redis down"))
        return super().set(key, value, ttl)


class StorageDownTests(SynchronousTestCase):
    """
    Tests for issuance while storage fails: nothing is lost.
    """

    def test_write_retried_until_stored(self):
        """An issued certificate is served at once and its write is retried until storage is back."""
        clock = Clock()
        storage = FlakyStorage(clock)
        storage.down = True
        cache = CertificateCache(generate_self_signed())
        manager = CertificateManager(cache, storage, FakeIssuer(), clock, Admission(["a.test"]), IssuanceConfig())
        certified = self.successResultOf(manager.obtain("a.test"))
        self.assertIs(cache.lookup("a.test"), certified)
        self.assertEqual(manager.status()["not_yet_stored"], ["a.test"])
        clock.advance(5)
        clock.advance(5)
        self.assertIsNone(self.successResultOf(storage.get(keys.cert_key("a.test"))))
        storage.down = False
        clock.advance(5)
        self.assertIsNotNone(self.successResultOf(storage.get(keys.cert_key("a.test"))))
        self.assertEqual(manager.status()["not_yet_stored"], [])
        self.assertEqual(clock.getDelayedCalls(), [])


class DownStorage(MemoryStorage):
    """Memory storage whose every operation fails while ``down`` (a Redis outage)."""

    down = False

    def _check(self, result):
        if self.down:
            from twisted.internet.defer import fail

            from kongacme.storage.errors import StorageUnavailable

            return fail(StorageUnavailable("connection refused"))
        return result()

    def get(self, key):
        return self._check(lambda: MemoryStorage.get(self, key))

    def set(self, key, value, ttl=None):
        return self._check(lambda: MemoryStorage.set(self, key, value, ttl))

    def add(self, key, value, ttl=None):
        return self._check(lambda: MemoryStorage.add(self, key, value, ttl))

    def delete(self, key):
        return self._check(lambda: MemoryStorage.delete(self, key))


class StoragePausedTests(SynchronousTestCase):
    """
    Tests for new orders pausing while storage is down, and resuming by
    themselves when it returns.
    """

    def setUp(self):
        from twisted.logger import Logger

        from kongacme.issuance.health import StorageHealth

        self.clock = Clock()
        self.storage = DownStorage(self.clock)
        self.cache = CertificateCache(generate_self_signed())
        self.issuer = FakeIssuer()
        self.manager = CertificateManager(
            self.cache, self.storage, self.issuer, self.clock, Admission(["*.a.test"]), IssuanceConfig()
        )
        self.events = []
        self.manager.health.log = Logger(observer=self.events.append)
        self.assertIsInstance(self.manager.health, StorageHealth)

    def levels(self):
        return [(e["log_level"].name, e["log_format"].split(" (")[0].split(" after")[0]) for e in self.events]

    def test_pause_and_resume(self):
        """
        An order hitting a storage outage fails with StoragePaused and
        logs once; further orders and handshakes start nothing (no CA
        traffic) until a probe gets an answer, which logs once; then
        orders run again.
        """
        from kongacme.errors import StoragePaused

        held = self.manager.obtain("x.a.test")  # storage is up: this one works
        self.successResultOf(held)
        self.storage.down = True
        failure = self.failureResultOf(self.manager.obtain("y.a.test"), StoragePaused)
        self.assertIn("paused", failure.value.message)
        self.assertFalse(self.manager.health.available)
        self.failureResultOf(self.manager.obtain("z.a.test"), StoragePaused)
        self.assertIsNone(self.manager.before_handshake("w.a.test"))
        self.assertEqual(self.manager.stats["handshake_storage_paused"], 1)
        self.assertEqual(self.issuer.requests, ["x.a.test"])
        # Certificates held are still served.
        self.assertIsNot(self.cache.lookup("x.a.test"), self.cache.fallback)
        self.clock.advance(10)
        self.assertFalse(self.manager.health.available)
        self.storage.down = False
        self.clock.advance(2)
        self.assertTrue(self.manager.health.available)
        self.assertEqual(
            self.levels(),
            [("error", "storage unavailable"), ("info", "storage reachable again")],
        )
        self.successResultOf(self.manager.obtain("y.a.test"))
        self.assertEqual(self.issuer.requests, ["x.a.test", "y.a.test"])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.manager.status()["storage"]["outages"], 1)


class RestartLockTests(SynchronousTestCase):
    """
    Tests for order locks left by a crash: a restarted node takes its
    previous life's locks over at once; another node's lock makes a
    visitor wait, with one log line saying so.
    """

    def setUp(self):
        from twisted.logger import Logger

        set_up_world(self)
        self.events = []
        self.log = Logger(observer=self.events.append)

    def manager(self, owner):
        manager = CertificateManager(
            self.cache, self.storage, self.issuer, self.clock, Admission(["*.example.test"]),
            IssuanceConfig(handshake_wait=10.0), lock_owner=owner,
        )
        manager.log = self.log
        return manager

    def crash_left_lock(self, owner, host):
        """A lock as a node killed mid-order leaves it: 30 s of lease and nobody renewing."""
        from kongacme.storage.locks import StorageLocker

        self.assertIsNotNone(self.successResultOf(StorageLocker(self.storage, owner).acquire(keys.update_lock(host), 30)))

    def lines(self, text):
        return [e for e in self.events if text in e.get("log_format", "")]

    def test_restart_takes_over_at_once(self):
        """
        The first visitor after a restart gets a certificate from an order
        started at once, not the fallback after waiting for the old lease.
        """
        from kongacme.storage.locks import LockOwner

        self.crash_left_lock(LockOwner("node1", "life1"), "crash.example.test")
        self.issuer.hold = True
        waiting = self.manager(LockOwner("node1", "life2")).before_handshake("crash.example.test")
        # Ordered at once, with no clock advance: nothing waited for the lease.
        self.assertEqual(self.issuer.requests, ["crash.example.test"])
        self.issuer.release()
        self.successResultOf(waiting)
        self.assertEqual(self.cache.lookup("crash.example.test").names, ("crash.example.test",))
        self.assertIsNone(self.successResultOf(self.storage.get(keys.update_lock("crash.example.test"))))
        self.assertEqual(self.lines("another node holds"), [])

    def test_other_node_lock_waits_and_says_so(self):
        """
        A lock another node holds is not taken: the visitor waits (at most
        handshake_wait) and one line names the host and the holder.
        """
        from kongacme.storage.locks import LockOwner

        self.crash_left_lock(LockOwner("node2", "life1"), "fleet.example.test")
        waiting = self.manager(LockOwner("node1", "life2")).before_handshake("fleet.example.test")
        self.assertNoResult(waiting)
        self.clock.advance(10.1)
        self.successResultOf(waiting)
        self.assertEqual(self.issuer.requests, [])
        self.assertIs(self.cache.lookup("fleet.example.test"), self.cache.fallback)
        [line] = self.lines("another node holds")
        self.assertEqual((line["host"], line["holder"]), ("fleet.example.test", "node node2"))

    def test_default_owner_is_a_node_of_its_own(self):
        """Without lock_owner a manager takes no other lock over (the behaviour before node ids)."""
        from kongacme.storage.locks import PROCESS_LIFE, LockOwner

        self.crash_left_lock(LockOwner("node1", "life1"), "x.example.test")
        self.crash_left_lock(LockOwner("node1", PROCESS_LIFE), "y.example.test")
        manager = self.manager(None)
        self.failureResultOf(manager.obtain("x.example.test"), OrderInProgress)
        self.failureResultOf(manager.obtain("y.example.test"), OrderInProgress)
        self.assertEqual(self.issuer.requests, [])


class BoundedStateTests(SynchronousTestCase):
    """
    Tests for the manager's per-host memory under a flood of distinct
    failing names (allow_any_domain with random SNI): capped and expiring.
    """

    def setUp(self):
        set_up_world(self)
        self.issuer.fail_with = AcmeProblem("urn:ietf:params:acme:error:rejectedIdentifier", "no", 400)

    def make(self, **kwargs):
        from twisted.logger import Logger

        manager = CertificateManager(
            self.cache, self.storage, self.issuer, self.clock, Admission([], allow_any_domain=True),
            IssuanceConfig(orders_per_minute=10**9, max_orders_in_flight=10**9), fail_backoff_minutes=5, **kwargs
        )
        manager.log = Logger(observer=lambda event: None)
        return manager

    def fail_names(self, manager, count, prefix="n"):
        for i in range(count):
            self.failureResultOf(manager.obtain("%s%d.flood.test" % (prefix, i)), AcmeProblem)

    def test_flood_capped(self):
        """
        Twice the cap of distinct failing names leave at most the cap of
        errors and backoffs, the newest (the default cap of 10,000 with
        20,000 names is in tests.test_issuance_recent; here a cap of 1,000
        keeps the test fast).
        """
        from kongacme.issuance.recent import MAX_ENTRIES

        self.assertEqual(self.make()._backoff_until.cap, MAX_ENTRIES)
        self.assertEqual(self.make().last_error.cap, MAX_ENTRIES)
        manager = self.make(max_entries=1_000)
        self.fail_names(manager, 2_000)
        self.assertEqual(manager.last_error.held, 1_000)
        self.assertEqual(manager._backoff_until.held, 1_000)
        self.assertIn("n1999.flood.test", manager.last_error)
        self.assertNotIn("n0.flood.test", manager.last_error)
        self.assertEqual(len(manager.status()["last_errors"]), 1_000)

    def test_entries_expire(self):
        """Backoffs go when they end, errors after an hour; a write sweeps what expired."""
        manager = self.make(max_entries=100)
        self.fail_names(manager, 50)
        self.assertEqual((manager._backoff_until.held, manager.last_error.held), (50, 50))
        self.clock.advance(301)
        self.assertNotIn("n0.flood.test", manager._backoff_until)
        self.assertIn("n0.flood.test", manager.last_error)
        self.fail_names(manager, 1, prefix="later")  # a write past the sweep interval sweeps
        self.assertEqual(manager._backoff_until.held, 1)
        self.assertEqual(manager.last_error.held, 51)
        self.clock.advance(3600)
        self.assertEqual(manager.status()["last_errors"], {})
        self.assertEqual(manager.last_error.held, 0)  # reading them all swept them
        self.assertEqual((len(manager._backoff_until), manager._backoff_until.held), (0, 0))

    def test_backoff_still_refuses_handshakes(self):
        """A remembered backoff still sends handshakes to the fallback until it ends, then orders again."""
        manager = self.make()
        self.fail_names(manager, 1)
        self.assertIsNone(manager.before_handshake("n0.flood.test"))
        self.assertEqual(manager.stats["handshake_backoff"], 1)
        self.clock.advance(301)
        self.issuer.fail_with = None
        manager.before_handshake("n0.flood.test")
        self.assertEqual(self.issuer.requests, ["n0.flood.test", "n0.flood.test"])

    def test_refusal_log_memory_capped(self):
        """Names refused by the rate limits are remembered (to log once a minute) within the cap."""
        manager = CertificateManager(
            self.cache, self.storage, self.issuer, self.clock, Admission([], allow_any_domain=True),
            IssuanceConfig(orders_per_minute=0), max_entries=100,
        )
        events = []
        from twisted.logger import Logger

        manager.log = Logger(observer=events.append)
        for i in range(500):
            self.assertIsNone(manager.before_handshake("r%d.flood.test" % (i,)))
        self.assertEqual(manager._refused_logged.held, 100)
        self.assertEqual(len(events), 500)
        manager.before_handshake("r499.flood.test")
        self.assertEqual(len(events), 500)  # logged within the minute already


class WildcardManagerTests(SynchronousTestCase):
    """Tests for CertificateManager with issuance.wildcard: names one label below a *. entry share one order."""

    def setUp(self):
        set_up_world(self)
        self.manager = CertificateManager(
            self.cache, self.storage, self.issuer, self.clock,
            Admission(["*.example.test"], wildcard=True), IssuanceConfig(handshake_wait=5.0), fail_backoff_minutes=5,
        )

    def test_one_order_stored_once(self):
        """
        Handshakes for a. and b.example.test start one order for
        *.example.test, stored under kong_acme:cert_key:*.example.test and
        served for both; a deeper name orders its own.
        """
        self.issuer.hold = True
        gates = [self.manager.before_handshake(name) for name in ("a.example.test", "b.example.test")]
        self.assertEqual(self.issuer.requests, ["*.example.test"])
        self.issuer.release()
        for gate in gates:
            self.successResultOf(gate)
        certified = self.cache.get("*.example.test")
        self.assertIs(self.cache.lookup("a.example.test"), certified)
        self.assertIs(self.cache.lookup("b.example.test"), certified)
        self.assertIsNotNone(self.successResultOf(self.storage.get(keys.cert_key("*.example.test"))))
        self.assertIsNone(self.successResultOf(self.storage.get(keys.cert_key("a.example.test"))))
        self.issuer.hold = False
        self.successResultOf(self.manager.obtain("x.a.example.test"))
        self.assertEqual(self.issuer.requests, ["*.example.test", "x.a.example.test"])

    def test_backoff_under_wildcard_name(self):
        """A failed wildcard order backs off every name it covers."""
        self.issuer.fail_with = AcmeProblem("urn:ietf:params:acme:error:dns", "no TXT", 400)
        self.failureResultOf(self.manager.obtain("a.example.test"), AcmeProblem)
        self.failureResultOf(self.manager.obtain("b.example.test"), BackoffActive)
        self.assertIsNone(self.manager.before_handshake("c.example.test"))
        self.assertEqual(self.issuer.requests, ["*.example.test"])
