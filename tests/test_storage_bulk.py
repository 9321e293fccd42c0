"""
Tests for kongacme.storage.bulk.
"""

from __future__ import annotations

from typing import Optional

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from kongacme.interfaces import IStorage
from kongacme.storage.bulk import get_many
from kongacme.storage.errors import StorageUnavailable
from kongacme.storage.memory import MemoryStorage


@implementer(IStorage)
class HeldStorage:
    """
    An IStorage whose reads wait until the test answers them (in any
    order); writes are not part of these tests and raise.
    """

    def __init__(self) -> None:
        self.reads: dict[str, Deferred] = {}
        self.started: list[str] = []
        self.most_in_flight = 0

    def in_flight(self) -> int:
        return sum(1 for d in self.reads.values() if not d.called)

    def get(self, key: str) -> Deferred:
        if key in self.reads:
            raise AssertionError("read twice: %s" % (key,))
        self.started.append(key)
        self.reads[key] = Deferred()
        self.most_in_flight = max(self.most_in_flight, self.in_flight())
        return self.reads[key]

    def answer(self, key: str, value: Optional[bytes]) -> None:
        self.reads[key].callback(value)

    def set(self, key, value, ttl=None):
        raise AssertionError("get_many must not write")

    add = set

    def delete(self, key):
        raise AssertionError("get_many must not delete")

    def list(self, prefix):
        raise AssertionError("get_many must not list")


class GetManyTests(SynchronousTestCase):
    """
    Tests for get_many: every key read once, at most ``concurrency`` reads
    in flight, values in the order of the keys, the first failure reported.
    """

    def test_values_in_key_order(self) -> None:
        """Values come back under their keys, in the order asked, None for a missing key."""
        storage = MemoryStorage(Clock())
        for key in ("k3", "k1", "k2"):
            self.successResultOf(storage.set(key, key.encode()))
        result = self.successResultOf(get_many(storage, ["k1", "missing", "k2", "k3"], concurrency=2))
        self.assertEqual(list(result.items()), [("k1", b"k1"), ("missing", None), ("k2", b"k2"), ("k3", b"k3")])

    def test_bounded_concurrency(self) -> None:
        """No more than ``concurrency`` reads are in flight; each key is read exactly once."""
        storage = HeldStorage()
        verifyObject(IStorage, storage)
        keys = ["k%d" % i for i in range(10)]
        d = get_many(storage, keys, concurrency=3)
        self.assertEqual(storage.started, ["k0", "k1", "k2"])
        # Answer out of order: the freed slot takes the next key.
        storage.answer("k1", b"1")
        self.assertEqual(storage.started, ["k0", "k1", "k2", "k3"])
        while storage.in_flight():
            key = next(k for k, r in storage.reads.items() if not r.called)
            storage.answer(key, key.encode())
        result = self.successResultOf(d)
        self.assertEqual(storage.most_in_flight, 3)
        self.assertEqual(sorted(storage.started), sorted(keys))
        self.assertEqual(list(result), keys)
        self.assertEqual(result["k1"], b"1")

    def test_duplicates_read_once(self) -> None:
        """A key listed twice is read once and appears once."""
        storage = MemoryStorage(Clock())
        self.successResultOf(storage.set("a", b"1"))
        self.assertEqual(self.successResultOf(get_many(storage, ["a", "b", "a"])), {"a": b"1", "b": None})

    def test_empty(self) -> None:
        """No keys: an empty result at once."""
        self.assertEqual(self.successResultOf(get_many(HeldStorage(), [])), {})

    def test_first_failure_stops_new_reads(self) -> None:
        """A failed read fails the result with that error, and no further read is started."""
        storage = HeldStorage()
        d = get_many(storage, ["k%d" % i for i in range(6)], concurrency=2)
        storage.reads["k0"].errback(StorageUnavailable("redis 127.0.0.1:1", "GET: no reply"))
        self.assertEqual(storage.started, ["k0", "k1"])
        storage.answer("k1", b"1")
        self.assertEqual(storage.started, ["k0", "k1"])
        self.failureResultOf(d, StorageUnavailable)

    def test_concurrency_must_be_positive(self) -> None:
        """A concurrency below one (or not an integer) is refused at once."""
        for bad in (0, -1, 2.5, True):
            self.assertRaises(ValueError, get_many, MemoryStorage(Clock()), ["k"], bad)
