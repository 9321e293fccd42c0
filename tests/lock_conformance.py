"""
The behaviour every :class:`kongacme.interfaces.IAtomicStorage` provider
must have for locks (compare-and-set, compare-and-delete, and
:class:`kongacme.storage.locks.StorageLocker` on top), as one mixin run
against each provider next to :class:`StorageConformanceMixin`::

    class MemoryTests(StorageConformanceMixin, LockConformanceMixin, TestCase):
        def make_storage(self): ...

It reuses the storage mixin's ``make_storage``, ``elapse`` and
``short_ttl`` (real-time providers wait for real).
"""

from __future__ import annotations

from twisted.internet.defer import inlineCallbacks
from zope.interface.verify import verifyObject

from kongacme.interfaces import IAtomicStorage, ILease, ILocker
from kongacme.storage import keys
from kongacme.storage.locks import LockOwner, StorageLocker


class LockConformanceMixin:
    """
    Tests for IAtomicStorage and the locks built on it.
    """

    def locker(self, owner: LockOwner | None = None) -> StorageLocker:
        return StorageLocker(self.storage) if owner is None else StorageLocker(self.storage, owner)

    def test_atomic_interface(self):
        """The provider is an IAtomicStorage; the locker and its leases verify."""
        self.assertTrue(verifyObject(IAtomicStorage, self.storage))
        self.assertTrue(verifyObject(ILocker, self.locker()))

    @inlineCallbacks
    def test_compare_and_set(self):
        """compare_and_set changes a value only when it holds the expected one."""
        key = keys.update_lock("cas.example")
        self.assertFalse((yield self.storage.compare_and_set(key, b"a", b"b")))
        self.assertIsNone((yield self.storage.get(key)))
        yield self.storage.set(key, b"a")
        self.assertFalse((yield self.storage.compare_and_set(key, b"x", b"b")))
        self.assertEqual((yield self.storage.get(key)), b"a")
        self.assertTrue((yield self.storage.compare_and_set(key, b"a", b"b")))
        self.assertEqual((yield self.storage.get(key)), b"b")

    @inlineCallbacks
    def test_compare_and_delete(self):
        """compare_and_delete removes a key only when it holds the expected value."""
        key = keys.update_lock("cad.example")
        yield self.storage.set(key, b"mine")
        self.assertFalse((yield self.storage.compare_and_delete(key, b"theirs")))
        self.assertEqual((yield self.storage.get(key)), b"mine")
        self.assertTrue((yield self.storage.compare_and_delete(key, b"mine")))
        self.assertIsNone((yield self.storage.get(key)))
        self.assertFalse((yield self.storage.compare_and_delete(key, b"mine")))

    @inlineCallbacks
    def test_exclusive(self):
        """A held lock cannot be acquired again; its key is visible in storage (Kong sees it held)."""
        name = keys.update_lock("x.example")
        lease = yield self.locker().acquire(name, self.short_ttl * 10)
        self.assertTrue(verifyObject(ILease, lease))
        self.assertIsNone((yield self.locker().acquire(name, self.short_ttl * 10)))
        self.assertEqual((yield self.storage.get(name)), lease.token.encode())
        self.assertFalse((yield self.storage.add(name, b"placeholder", 30)))

    @inlineCallbacks
    def test_release_then_acquire(self):
        """Releasing makes the lock free; each acquisition gets a new token."""
        name = keys.update_lock("r.example")
        first = yield self.locker().acquire(name, self.short_ttl * 10)
        self.assertTrue((yield first.release()))
        second = yield self.locker().acquire(name, self.short_ttl * 10)
        self.assertIsNotNone(second)
        self.assertNotEqual(first.token, second.token)

    @inlineCallbacks
    def test_renew_keeps_it(self):
        """A renewed lease outlives its first TTL."""
        name = keys.update_lock("renew.example")
        lease = yield self.locker().acquire(name, self.short_ttl)
        yield self.elapse(self.short_ttl * 0.6)
        self.assertTrue((yield lease.renew(self.short_ttl * 3)))
        yield self.elapse(self.short_ttl * 0.6 + self.expiry_slack)
        self.assertIsNone((yield self.locker().acquire(name, self.short_ttl)))

    @inlineCallbacks
    def test_expired_lease_lost(self):
        """An expired lease is taken by another; the old owner can neither renew nor release it."""
        name = keys.update_lock("exp.example")
        old = yield self.locker().acquire(name, self.short_ttl)
        yield self.elapse(self.short_ttl + self.expiry_slack + 0.05)
        new = yield self.locker().acquire(name, self.short_ttl * 10)
        self.assertIsNotNone(new)
        self.assertFalse((yield old.renew(self.short_ttl)))
        self.assertFalse((yield old.release()))
        self.assertEqual((yield self.storage.get(name)), new.token.encode())

    @inlineCallbacks
    def test_previous_life_taken_over(self):
        """
        A lock left by this node's previous life (a crash mid-order) is
        taken over at once, before its lease ends; the dead life's lease can
        neither renew nor release it any more.
        """
        name = keys.update_lock("crash.example")
        old = yield self.locker(LockOwner("aaaa", "life1")).acquire(name, self.short_ttl * 10)
        new = yield self.locker(LockOwner("aaaa", "life2")).acquire(name, self.short_ttl * 10)
        self.assertIsNotNone(new)
        self.assertTrue(new.token.startswith("aaaa:life2:"))
        self.assertEqual((yield self.storage.get(name)), new.token.encode())
        self.assertFalse((yield old.renew(self.short_ttl)))
        self.assertFalse((yield old.release()))
        self.assertTrue((yield new.release()))

    @inlineCallbacks
    def test_other_nodes_locks_kept(self):
        """
        Another node's lock (a fleet sharing the store), Kong's placeholder
        and this very life's lock are not taken over.
        """
        name = keys.update_lock("fleet.example")
        theirs = yield self.locker(LockOwner("bbbb", "life1")).acquire(name, self.short_ttl * 10)
        self.assertIsNone((yield self.locker(LockOwner("aaaa", "life2")).acquire(name, self.short_ttl * 10)))
        self.assertIsNone((yield self.locker(LockOwner("bbbb", "life1")).acquire(name, self.short_ttl * 10)))
        self.assertEqual((yield self.storage.get(name)), theirs.token.encode())
        kong = keys.update_lock("kong.example")
        yield self.storage.add(kong, b"placeholder", self.short_ttl * 10)
        self.assertIsNone((yield self.locker(LockOwner("aaaa", "life2")).acquire(kong, self.short_ttl * 10)))
        self.assertEqual((yield self.storage.get(kong)), b"placeholder")

    @inlineCallbacks
    def test_holder(self):
        """holder() names who holds a lock, for the log line of a waiting visitor."""
        name = keys.update_lock("who.example")
        mine = self.locker(LockOwner("aaaa", "life2"))
        self.assertIsNone((yield mine.holder(name)))
        yield self.locker(LockOwner("bbbb", "life1")).acquire(name, self.short_ttl * 10)
        self.assertEqual((yield mine.holder(name)), "node bbbb")
        kong = keys.update_lock("who-kong.example")
        yield self.storage.add(kong, b"placeholder", self.short_ttl * 10)
        self.assertEqual((yield mine.holder(kong)), "a Kong node")
