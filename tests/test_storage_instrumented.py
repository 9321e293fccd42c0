"""
Tests for kongacme.storage.instrumented.
"""

from __future__ import annotations

import collections
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from kongacme.interfaces import IAtomicStorage, IStorage
from kongacme.storage.errors import StorageUnavailable
from kongacme.storage.instrumented import InstrumentedAtomicStorage, InstrumentedStorage, instrument
from kongacme.storage.memory import MemoryStorage
from tests.lock_conformance import LockConformanceMixin
from tests.storage_conformance import StorageConformanceMixin


class InstrumentedMemoryConformanceTests(StorageConformanceMixin, LockConformanceMixin, TestCase):
    """
    Tests for InstrumentedAtomicStorage over MemoryStorage: the IStorage
    and lock conformance suites, with no error counted.
    """

    def make_storage(self) -> tuple[InstrumentedStorage, Clock]:
        clock = Clock()
        storage = instrument(MemoryStorage(clock))

        def nothing_counted() -> None:
            self.assertEqual(storage.errors, collections.Counter())

        self.addCleanup(nothing_counted)
        return storage, clock


@implementer(IStorage)
class DownStorage:
    """
    An IStorage (not atomic) whose every operation fails as an unreachable
    server would; misuse (a str value) raises TypeError at once.
    """

    closed = False

    def _down(self) -> Deferred:
        return fail(StorageUnavailable("storage down"))

    def get(self, key: str) -> Deferred:
        return self._down()

    def set(self, key: str, value: bytes, ttl: Any = None) -> Deferred:
        if not isinstance(value, bytes):
            raise TypeError("value must be bytes")
        return self._down()

    def add(self, key: str, value: bytes, ttl: Any = None) -> Deferred:
        raise RuntimeError("exploded before answering")

    def delete(self, key: str) -> Deferred:
        return self._down()

    def list(self, prefix: str) -> Deferred:
        return fail(ValueError("bad prefix"))

    def close(self) -> None:
        self.closed = True


class InstrumentedStorageTests(SynchronousTestCase):
    """
    Tests for InstrumentedStorage's counting and pass-through.
    """

    def test_interfaces_follow_the_wrapped(self) -> None:
        """
        instrument keeps IAtomicStorage when the wrapped store has it, and
        only IStorage otherwise; both verify.
        """
        atomic = instrument(MemoryStorage(Clock()))
        plain = instrument(DownStorage())
        self.assertIsInstance(atomic, InstrumentedAtomicStorage)
        self.assertTrue(verifyObject(IAtomicStorage, atomic))
        self.assertNotIsInstance(plain, InstrumentedAtomicStorage)
        self.assertTrue(verifyObject(IStorage, plain))
        self.assertFalse(IAtomicStorage.providedBy(plain))

    def test_rejects_non_storage(self) -> None:
        """
        Wrapping something that is not an IStorage raises TypeError, and so
        does claiming atomicity for a store without it.
        """
        self.assertRaises(TypeError, InstrumentedStorage, object())
        self.assertRaises(TypeError, InstrumentedAtomicStorage, DownStorage())

    def test_counts_failures_per_operation(self) -> None:
        """
        Failed Deferreds and exceptions raised by the wrapped store count
        once per call under the operation's name, and still reach the
        caller unchanged.
        """
        errors: collections.Counter = collections.Counter()
        storage = instrument(DownStorage(), errors)
        self.failureResultOf(storage.get("k"), StorageUnavailable)
        self.failureResultOf(storage.get("k"), StorageUnavailable)
        self.failureResultOf(storage.set("k", b"v"), StorageUnavailable)
        self.failureResultOf(storage.delete("k"), StorageUnavailable)
        self.assertRaises(RuntimeError, storage.add, "k", b"v")
        self.assertIs(storage.errors, errors)
        self.assertEqual(errors, {"get": 2, "set": 1, "delete": 1, "add": 1})

    def test_misuse_not_counted(self) -> None:
        """
        TypeError and ValueError (a caller's mistake, not a store outage)
        pass through uncounted.
        """
        storage = instrument(DownStorage())
        self.assertRaises(TypeError, storage.set, "k", "not bytes")
        self.failureResultOf(storage.list("p"), ValueError)
        self.assertEqual(storage.errors, collections.Counter())

    def test_successes_pass_through(self) -> None:
        """
        Results are the wrapped store's, and compare-and-swap goes through.
        """
        storage = instrument(MemoryStorage(Clock()))
        self.successResultOf(storage.set("k", b"v", 30.0))
        self.assertEqual(self.successResultOf(storage.get("k")), b"v")
        self.assertIs(self.successResultOf(storage.compare_and_set("k", b"v", b"w")), True)
        self.assertIs(self.successResultOf(storage.compare_and_delete("k", b"nope")), False)
        self.assertEqual(self.successResultOf(storage.list("")), ["k"])
        self.assertEqual(storage.errors, collections.Counter())

    def test_other_attributes_forwarded(self) -> None:
        """
        Attributes outside IStorage (close, used by the daemon on reload
        and stop) are the wrapped provider's; private ones are not.
        """
        inner = DownStorage()
        storage = instrument(inner)
        storage.close()
        self.assertTrue(inner.closed)
        self.assertIs(storage.wrapped, inner)
        self.assertRaises(AttributeError, getattr, storage, "_down")
        self.assertRaises(AttributeError, getattr, storage, "no_such_thing")
