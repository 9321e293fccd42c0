"""
Locks with an owner token and a renewable lease, on any
:class:`~kongacme.interfaces.IAtomicStorage`.

The lock is the storage key itself (Kong's ``kong_acme:update_lock:<host>``)
holding the owner's token, so a Kong node sharing the store sees it held
(its ``add`` fails) and only the owner can renew or release it.
"""

from __future__ import annotations

import uuid

import attrs
from twisted.internet.defer import Deferred
from zope.interface import implementer

from kongacme.interfaces import IAtomicStorage, ILease, ILocker


@implementer(ILease)
@attrs.define
class StorageLease:
    """A held lock: ``name`` holds ``token`` until it expires or is released."""

    name: str
    token: str
    _storage: IAtomicStorage = attrs.field(repr=False)

    def renew(self, ttl: float) -> Deferred:
        """Extend to ``ttl`` seconds from now if still ours: ``Deferred[bool]``."""
        value = self.token.encode("ascii")
        return self._storage.compare_and_set(self.name, value, value, ttl)

    def release(self) -> Deferred:
        """Delete the lock if still ours: ``Deferred[bool]``."""
        return self._storage.compare_and_delete(self.name, self.token.encode("ascii"))


@implementer(ILocker)
@attrs.define
class StorageLocker:
    """:class:`ILocker` over an :class:`IAtomicStorage` (``add`` + CAS)."""

    _storage: IAtomicStorage

    def acquire(self, name: str, ttl: float) -> Deferred:
        """Try once: ``Deferred`` of a :class:`StorageLease`, or ``None`` if held."""
        token = uuid.uuid4().hex
        return self._storage.add(name, token.encode("ascii"), ttl).addCallback(
            lambda stored: StorageLease(name, token, self._storage) if stored else None
        )
