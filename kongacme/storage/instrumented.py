"""
A storage provider wrapped to count its failures per operation, for the
``kongacme_storage_errors_total`` metric. Values, TTLs and results pass
through untouched.

Wrap with :func:`instrument`, which keeps :class:`IAtomicStorage` (locks)
when the wrapped provider has it::

    errors = collections.Counter()           # kept across reloads
    storage = instrument(storage_from_config(acme, state_dir, reactor), errors)
"""

from __future__ import annotations

import collections
from typing import Any, Callable, Optional

import attrs
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from zope.interface import implementer

from kongacme.storage._wrapper import ForwardingWrapper
from kongacme.interfaces import IAtomicStorage, IStorage
from kongacme.validators import provides

#: Errors that mean the caller misused the API (a bad key, a str value),
#: not that the store failed; they pass through uncounted.
MISUSE = (TypeError, ValueError)


@implementer(IStorage)
@attrs.define
class InstrumentedStorage(ForwardingWrapper):
    """
    An :class:`IStorage` that forwards every call to ``_storage`` and adds
    one to ``errors[operation]`` each time a call fails (raises, or its
    ``Deferred`` fails), misuse (:data:`MISUSE`) excepted.

    Any other attribute (``close``, ``last_error``…) is the wrapped
    provider's.

    :ivar _storage: the provider being wrapped.
    :ivar errors: operation name (``get``, ``set``, ``add``, ``delete``,
        ``list``, ``compare_and_set``, ``compare_and_delete``) to failures;
        pass one in to keep counting across storage rebuilds.
    """

    _storage: IStorage = attrs.field(validator=provides(IStorage))
    errors: collections.Counter = attrs.field(factory=collections.Counter)

    def _call(self, operation: str, method: Callable[..., Deferred], *args: Any) -> Deferred:
        try:
            result = method(*args)
        except MISUSE:
            raise
        except Exception:
            self.errors[operation] += 1
            raise

        def failed(failure: Failure) -> Failure:
            if not failure.check(*MISUSE):
                self.errors[operation] += 1
            return failure

        return result.addErrback(failed)

    def get(self, key: str) -> Deferred[Optional[bytes]]:
        return self._call("get", self._storage.get, key)

    def set(self, key: str, value: bytes, ttl: Optional[float] = None) -> Deferred[None]:
        return self._call("set", self._storage.set, key, value, ttl)

    def add(self, key: str, value: bytes, ttl: Optional[float] = None) -> Deferred[bool]:
        return self._call("add", self._storage.add, key, value, ttl)

    def delete(self, key: str) -> Deferred[None]:
        return self._call("delete", self._storage.delete, key)

    def list(self, prefix: str) -> Deferred[list[str]]:
        return self._call("list", self._storage.list, prefix)


@implementer(IAtomicStorage)
@attrs.define
class InstrumentedAtomicStorage(InstrumentedStorage):
    """
    :class:`InstrumentedStorage` for an :class:`IAtomicStorage`, counting
    the compare-and-swap operations too.
    """

    def __attrs_post_init__(self) -> None:
        if not IAtomicStorage.providedBy(self._storage):
            raise TypeError(f"storage must provide IAtomicStorage, not {self._storage!r}")

    def compare_and_set(self, key: str, expected: bytes, value: bytes, ttl: Optional[float] = None) -> Deferred[bool]:
        return self._call("compare_and_set", self._storage.compare_and_set, key, expected, value, ttl)

    def compare_and_delete(self, key: str, expected: bytes) -> Deferred[bool]:
        return self._call("compare_and_delete", self._storage.compare_and_delete, key, expected)


def instrument(storage: IStorage, errors: Optional[collections.Counter] = None) -> InstrumentedStorage:
    """
    Wrap ``storage`` to count its failures.

    :param storage: an :class:`IStorage` provider.
    :param errors: the ``Counter`` to count into (a new one if ``None``).
    :return: an :class:`InstrumentedAtomicStorage` when ``storage`` provides
        :class:`IAtomicStorage`, else an :class:`InstrumentedStorage`.
    """
    errors = collections.Counter() if errors is None else errors
    if IAtomicStorage.providedBy(storage):
        return InstrumentedAtomicStorage(storage, errors)
    return InstrumentedStorage(storage, errors)
