"""
Tests for kongacme.web.tokens.
"""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from kongacme.interfaces import IChallengeTokenStore
from kongacme.web.tokens import SWEEP_INTERVAL, MemoryChallengeTokenStore


class MemoryChallengeTokenStoreTests(SynchronousTestCase):
    """
    Tests for MemoryChallengeTokenStore.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.store = MemoryChallengeTokenStore(self.clock)

    def test_interface(self) -> None:
        """
        The store provides IChallengeTokenStore.
        """
        self.assertTrue(verifyObject(IChallengeTokenStore, self.store))

    def test_put_get(self) -> None:
        """
        A stored key authorization is returned by get, through Deferreds.
        """
        self.assertIsNone(self.successResultOf(self.store.put("tok", "tok.thumb")))
        self.assertEqual(self.successResultOf(self.store.get("tok")), "tok.thumb")

    def test_unknown(self) -> None:
        """
        get of an unknown token fires with None.
        """
        self.assertIsNone(self.successResultOf(self.store.get("nope")))

    def test_replace(self) -> None:
        """
        A second put for the same token replaces the value and the expiry.
        """
        self.store.put("tok", "old", ttl=10)
        self.clock.advance(8)
        self.store.put("tok", "new", ttl=10)
        self.clock.advance(8)
        self.assertEqual(self.successResultOf(self.store.get("tok")), "new")

    def test_remove(self) -> None:
        """
        remove forgets a token, and removing an unknown token is no error.
        """
        self.store.put("tok", "ka")
        self.assertIsNone(self.successResultOf(self.store.remove("tok")))
        self.assertIsNone(self.successResultOf(self.store.get("tok")))
        self.assertIsNone(self.successResultOf(self.store.remove("tok")))

    def test_default_ttl(self) -> None:
        """
        Without a ttl an entry lives 3600 seconds, as in Kong.
        """
        self.store.put("tok", "ka")
        self.clock.advance(3599)
        self.assertEqual(self.successResultOf(self.store.get("tok")), "ka")
        self.clock.advance(1)
        self.assertIsNone(self.successResultOf(self.store.get("tok")))

    def test_expired_dropped_on_read(self) -> None:
        """
        Reading an expired entry returns None and drops it from memory.
        """
        self.store.put("tok", "ka", ttl=5)
        self.clock.advance(5)
        self.assertEqual(len(self.store), 1)
        self.assertIsNone(self.successResultOf(self.store.get("tok")))
        self.assertEqual(len(self.store), 0)

    def test_sweep(self) -> None:
        """
        Expired entries that are never read again are dropped by the sweep
        that a later put runs, so memory does not grow without bound.
        """
        for i in range(100):
            self.store.put(f"t{i}", "ka", ttl=1)
        self.clock.advance(SWEEP_INTERVAL)
        self.store.put("fresh", "ka", ttl=1000)
        self.assertEqual(len(self.store), 1)
        self.assertEqual(self.successResultOf(self.store.get("fresh")), "ka")

    def test_sweep_is_rate_limited(self) -> None:
        """
        The sweep runs at most once per SWEEP_INTERVAL; in between, expired
        entries wait for the next sweep or a read.
        """
        self.store.put("a", "ka", ttl=1)
        self.clock.advance(2)
        self.store.put("b", "ka", ttl=1000)
        self.assertEqual(len(self.store), 2)
        self.clock.advance(SWEEP_INTERVAL)
        self.store.put("c", "ka", ttl=1000)
        self.assertEqual(len(self.store), 2)

    def test_misuse(self) -> None:
        """
        Non-str tokens or values and non-positive or non-numeric ttls raise.
        """
        self.assertRaises(TypeError, self.store.put, b"tok", "ka")
        self.assertRaises(TypeError, self.store.put, "tok", b"ka")
        self.assertRaises(TypeError, self.store.put, "tok", "ka", ttl="10")
        self.assertRaises(TypeError, self.store.put, "tok", "ka", ttl=True)
        self.assertRaises(ValueError, self.store.put, "tok", "ka", ttl=0)
        self.assertRaises(ValueError, self.store.put, "tok", "ka", ttl=-1)
        self.assertRaises(TypeError, self.store.get, None)
        self.assertRaises(TypeError, self.store.remove, 1)
