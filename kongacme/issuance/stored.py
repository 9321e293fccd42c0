"""
Reading certificates back from storage (Kong's ``cert_key`` entries):
one host's, or every one at start. Corrupt or unreadable values are
reported and skipped, never fatal.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.logger import Logger

from kongacme.errors import CertificateError
from kongacme.interfaces import IStorage
from kongacme.storage import keys
from kongacme.storage.bulk import get_many
from kongacme.tls.cache import CertificateCache

log = Logger()


def _corrupt(key: str, error: Exception) -> None:
    log.warn("ignoring corrupt stored certificate {key}: {error}", key=key, error=str(error))


@inlineCallbacks
def stored_certificate(storage: IStorage, host: str, now: float):
    """
    ``host``'s stored certificate if it is still valid at ``now``.

    :return: ``Deferred`` firing with a :class:`CertifiedKey` or ``None``
        (absent, expired, corrupt or undecryptable; the last two logged).
    """
    key = keys.cert_key(host)
    try:
        raw = yield storage.get(key)
        if raw is None:
            return None
        certified = keys.decode_cert_key(raw, key)
    except (CertificateError, ValueError) as e:
        _corrupt(key, e)
        return None
    if certified.not_after.timestamp() <= now:
        return None
    return certified


@attrs.frozen
class _TolerantReader:
    """Reads that answer a value error (corrupt, undecryptable) with the exception instead of failing."""

    _storage: Any

    def get(self, key: str) -> Deferred:
        return self._storage.get(key).addErrback(lambda f: f.trap(ValueError) and f.value)


@inlineCallbacks
def load_all(storage: IStorage, cache: CertificateCache):
    """
    Put every certificate found in storage into ``cache`` (at start).

    Reads run concurrently (10,000 sequential round trips dominated a cold
    start, ``bench/RESULTS.md``); one summary line is the caller's to log,
    the cache logs each certificate at debug level only.

    :return: ``Deferred`` firing with the number loaded.
    """
    names = yield storage.list(keys.CERT_KEY_PREFIX)
    values = yield get_many(_TolerantReader(storage), names)
    loaded = 0
    for key, raw in values.items():
        if raw is None:
            continue
        try:
            if isinstance(raw, Exception):
                raise raw
            certified = keys.decode_cert_key(raw, key)
        except (CertificateError, ValueError) as e:
            _corrupt(key, e)
            continue
        cache.put(certified, [key[len(keys.CERT_KEY_PREFIX):]], quiet=True)
        loaded += 1
    return loaded
