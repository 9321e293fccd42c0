"""
Tests for tests.storage_conformance: the suite also fits providers that
answer later and expire keys in real time (as Redis, OpenBao and Consul
will), shown with an asynchronous wrapper around MemoryStorage.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from kongacme.interfaces import IStorage
from kongacme.storage.memory import MemoryStorage
from tests.storage_conformance import StorageConformanceMixin


@implementer(IStorage)
class SlowStorage:
    """
    An IStorage whose every answer arrives on a later reactor iteration,
    with expiry judged by the real reactor's clock.
    """

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self._inner = MemoryStorage(reactor)

    def _later(self, method: Callable[..., Deferred[Any]], *args: Any) -> Deferred[Any]:
        # Checks run at once, like a client library validating arguments.
        d = method(*args)
        return deferLater(self._reactor, 0.001, lambda: d)

    def get(self, key: str) -> Deferred[Any]:
        return self._later(self._inner.get, key)

    def set(self, key: str, value: bytes, ttl: Any = None) -> Deferred[Any]:
        return self._later(self._inner.set, key, value, ttl)

    def add(self, key: str, value: bytes, ttl: Any = None) -> Deferred[Any]:
        return self._later(self._inner.add, key, value, ttl)

    def delete(self, key: str) -> Deferred[Any]:
        return self._later(self._inner.delete, key)

    def list(self, prefix: str) -> Deferred[Any]:
        return self._later(self._inner.list, prefix)


class RealTimeConformanceTests(StorageConformanceMixin, TestCase):
    """
    Tests for StorageConformanceMixin with an asynchronous provider on real
    time: every test passes (the exact-boundary one is skipped).
    """

    supports_injected_clock = False
    short_ttl = 0.2
    expiry_slack = 0.05

    def make_storage(self) -> Deferred[tuple[SlowStorage, None]]:
        from twisted.internet import reactor

        # Answer asynchronously here too, as a connecting client would.
        return deferLater(reactor, 0.001, lambda: (SlowStorage(reactor), None))
