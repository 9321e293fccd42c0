"""
The push side of fleet propagation: an optional change feed a storage may
offer beside the polled change markers. Redis has one (pub/sub,
:mod:`kongacme.fleet.redis_feed`); Vault, Consul and files have none and
are polled only.

The interface lives here rather than in :mod:`kongacme.interfaces` for now
because only the fleet package uses it.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet.interfaces import IReactorTime
from zope.interface import Attribute, Interface

from kongacme.interfaces import IStorage


class IChangeFeed(Interface):
    """
    Tells every node at once that a host has a new certificate. Best
    effort: messages may be lost (while a node reconnects), so the polled
    markers stay as the safety net.
    """

    connected = Attribute("whether changes published by other nodes reach this one now (bool)")

    def start(on_change, on_connected):
        """
        Start receiving.

        :param on_change: called with ``(host, fingerprint)`` for each
            change announced by any node (this one included).
        :param on_connected: called each time the feed is (re)connected,
            so that the caller can catch up with what it missed meanwhile.
        """

    def publish(host, fingerprint):
        """
        Announce ``host``'s new certificate to every node.

        :return: ``Deferred`` firing when sent, or failing.
        """

    def stop():
        """
        Stop receiving and close connections; harmless twice.

        :return: ``Deferred`` firing with ``None`` once closed.
        """


def unwrap(storage: Any) -> Any:
    """The provider under any wrappers (each exposing ``wrapped``)."""
    while getattr(storage, "wrapped", None) is not None:
        storage = storage.wrapped
    return storage


def change_feed_for(storage: Optional[IStorage], clock: IReactorTime) -> Optional[IChangeFeed]:
    """
    The change feed ``storage`` offers, or ``None`` (poll only).

    :param storage: the shared store, possibly wrapped (encryption).
    :param clock: timers for the feed.
    """
    inner = unwrap(storage)
    if inner is None:
        return None
    from kongacme.storage.redis import RedisStorage

    if isinstance(inner, RedisStorage):
        from kongacme.fleet.redis_feed import RedisChangeFeed

        return RedisChangeFeed(inner, clock)
    return None
