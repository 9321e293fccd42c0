"""
Tests for kongacme.storage.memory.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from kongacme.storage.memory import SWEEP_INTERVAL, MemoryStorage
from tests.lock_conformance import LockConformanceMixin
from tests.storage_conformance import StorageConformanceMixin


class MemoryStorageConformanceTests(StorageConformanceMixin, LockConformanceMixin, TestCase):
    """
    Tests for MemoryStorage: the IStorage conformance suite.
    """

    def make_storage(self) -> tuple[MemoryStorage, Clock]:
        clock = Clock()
        return MemoryStorage(clock), clock


class MemoryStorageTests(SynchronousTestCase):
    """
    Tests for MemoryStorage's own behaviour: synchronous results and memory
    that cannot grow forever.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.storage = MemoryStorage(self.clock)

    def test_results_already_fired(self) -> None:
        """
        Every method returns a Deferred that has already fired.
        """
        self.assertIsNone(self.successResultOf(self.storage.set("k", b"v")))
        self.assertIs(self.successResultOf(self.storage.add("k", b"w")), False)
        self.assertEqual(self.successResultOf(self.storage.get("k")), b"v")
        self.assertEqual(self.successResultOf(self.storage.list("")), ["k"])
        self.assertIsNone(self.successResultOf(self.storage.delete("k")))

    def test_misuse_raises(self) -> None:
        """
        Misuse raises at once rather than returning a failed Deferred.
        """
        self.assertRaises(TypeError, self.storage.set, "k", "text")
        self.assertRaises(ValueError, self.storage.add, "k", b"v", 0)

    def test_expired_dropped_when_read(self) -> None:
        """
        An expired entry is dropped from memory when get meets it.
        """
        self.storage.set("k", b"v", ttl=5)
        self.clock.advance(5)
        self.assertEqual(len(self.storage), 1)
        self.assertIsNone(self.successResultOf(self.storage.get("k")))
        self.assertEqual(len(self.storage), 0)

    def test_expired_dropped_by_list(self) -> None:
        """
        list drops the expired entries it meets.
        """
        for i in range(5):
            self.storage.set("t%d" % i, b"v", ttl=5)
        self.storage.set("keep", b"v")
        self.clock.advance(5)
        self.assertEqual(self.successResultOf(self.storage.list("t")), [])
        self.assertEqual(len(self.storage), 1)

    def test_sweep_on_write(self) -> None:
        """
        Entries that are never read again are dropped by the sweep a write
        starts once SWEEP_INTERVAL has passed.
        """
        for i in range(100):
            self.storage.set("tok%d#http-01" % i, b"ka", ttl=10)
        self.assertEqual(len(self.storage), 100)
        self.clock.advance(SWEEP_INTERVAL)
        self.storage.set("other", b"v")
        self.assertEqual(len(self.storage), 1)

    def test_sweep_at_most_once_per_interval(self) -> None:
        """
        Writes within SWEEP_INTERVAL of the last sweep do not sweep again
        (a write costs O(1)); the explicit sweep method always does.
        """
        self.storage.set("first", b"v")
        self.storage.set("k", b"v", ttl=1)
        self.clock.advance(2)
        self.storage.set("other", b"v")
        self.assertEqual(len(self.storage), 3)
        self.assertEqual(self.storage.sweep(), 1)
        self.assertEqual(len(self.storage), 2)

    def test_not_persistent(self) -> None:
        """
        A new MemoryStorage starts empty (storage: shm is lost on restart).
        """
        self.storage.set("k", b"v")
        self.assertIsNone(self.successResultOf(MemoryStorage(self.clock).get("k")))
