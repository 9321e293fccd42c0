"""
The push side of fleet propagation: an optional change feed a storage may
offer beside the polled change markers. Redis has one (pub/sub,
:mod:`kongacme.fleet.redis_feed`); Vault, Consul and files have none and
are polled only.
:class:`~kongacme.interfaces.IChangeFeed` is re-exported here.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet.interfaces import IReactorTime
from kongacme.interfaces import IChangeFeed, IStorage

__all__ = ["IChangeFeed", "change_feed_for", "unwrap"]


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
