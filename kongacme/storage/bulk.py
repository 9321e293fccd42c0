"""
Reading many keys from any :class:`~kongacme.interfaces.IStorage` at once,
with a bounded number of reads in flight.

Loading every stored certificate one ``GET`` after another costs one round
trip per key (10,000 certificates in Redis: ~10,000 sequential round
trips, see ``bench/RESULTS.md``, "Issue 4: cold start"). Networked
providers answer concurrent reads much faster than sequential ones
(txredisapi pipelines them on its connections, the Vault client runs
them on parallel HTTP connections), so :func:`get_many` keeps
``concurrency`` reads going.
"""

from __future__ import annotations

from typing import Iterable, Iterator, Optional

from twisted.internet.defer import Deferred, gatherResults

from kongacme.interfaces import IStorage

#: Reads in flight by default: enough to hide a LAN round trip, few enough
#: not to queue hundreds of requests on a Vault server or a slow Redis.
DEFAULT_CONCURRENCY = 32


def get_many(storage: IStorage, keys: Iterable[str], concurrency: int = DEFAULT_CONCURRENCY) -> Deferred:
    """
    ``storage.get`` every key in ``keys``, at most ``concurrency`` at a time.

    :param storage: any storage provider.
    :param keys: the keys to read; a key given twice is read once.
    :param concurrency: reads in flight at most (at least 1).
    :return: ``Deferred`` firing with ``{key: value or None}`` in the order
        of ``keys``, or failing with the first read's failure (no further
        reads are started then; those in flight are left to finish).
    :raises ValueError: if ``concurrency`` is below 1.
    """
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ValueError(f"concurrency must be a positive integer, not {concurrency!r}")
    wanted = list(dict.fromkeys(keys))
    results: dict[str, Optional[bytes]] = dict.fromkeys(wanted)
    pending = iter(wanted)
    failed: list[bool] = []

    async def worker(source: Iterator[str]) -> None:
        # One shared iterator: each key is taken by exactly one worker
        # (everything runs in the reactor thread).
        for key in source:
            if failed:
                return
            try:
                results[key] = await storage.get(key)
            except BaseException:
                failed.append(True)
                raise

    workers = [Deferred.fromCoroutine(worker(pending)) for _ in range(min(concurrency, len(wanted)))]
    d = gatherResults(workers, consumeErrors=True)
    d.addErrback(lambda failure: failure.value.subFailure)
    return d.addCallback(lambda _: results)


__all__ = ["DEFAULT_CONCURRENCY", "get_many"]
