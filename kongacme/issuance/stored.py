"""
Reading certificates back from storage (Kong's ``cert_key`` entries):
one host's, or every one at start. Corrupt or unreadable values are
reported and skipped, never fatal.
"""

from __future__ import annotations

from typing import Any, Optional

import attrs
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.logger import Logger

from kongacme.errors import CertificateError
from kongacme.interfaces import IStorage
from kongacme.storage import keys
from kongacme.storage.bulk import get_many
from kongacme.tls.cache import CertificateCache
from kongacme.tls.certs import CertifiedKey

log = Logger()


def _corrupt(key: str, error: Exception) -> None:
    log.warn("ignoring corrupt stored certificate {key}: {error}", key=key, error=str(error))


def decode_stored(raw: Any, key: str) -> Optional[CertifiedKey]:
    """
    The certificate in a value read from ``key``, or ``None`` (reported)
    when the value is corrupt or is the exception a tolerant read gave.
    """
    try:
        if isinstance(raw, Exception):
            raise raw
        return keys.decode_cert_key(raw, key)
    except (CertificateError, ValueError, TypeError) as e:
        _corrupt(key, e)
        return None


@inlineCallbacks
def read_certificate(storage: IStorage, host: str):
    """
    ``host``'s stored certificate, valid or not.

    :return: ``Deferred`` firing with a :class:`CertifiedKey` or ``None``
        (absent, or corrupt or undecryptable: reported), failing with the
        storage's error when it cannot be read.
    """
    key = keys.cert_key(host)
    try:
        # A value error may come from get itself (a key that does not
        # decrypt, kongacme.storage.encryption): that entry only is skipped.
        raw = yield storage.get(key)
    except ValueError as e:
        raw = e
    return None if raw is None else decode_stored(raw, key)


def stored_certificate(storage: IStorage, host: str, now: float) -> Deferred:
    """
    ``host``'s stored certificate if it is still valid at ``now``, else
    ``None`` (see :func:`read_certificate`).
    """
    return read_certificate(storage, host).addCallback(
        lambda certified: certified if certified is not None and certified.not_after.timestamp() > now else None
    )


@attrs.frozen
class _TolerantReader:
    """Reads that answer a value error (corrupt, undecryptable) with the exception instead of failing."""

    _storage: Any

    def get(self, key: str) -> Deferred:
        return self._storage.get(key).addErrback(lambda f: f.trap(ValueError) and f.value)


@inlineCallbacks
def read_all(storage: IStorage):
    """
    Every stored certificate, read concurrently (10,000 sequential round
    trips dominated a cold start, ``bench/RESULTS.md``). Corrupt values are
    reported and skipped.

    :return: ``Deferred`` firing with ``[(host, CertifiedKey)]`` in the
        order listed, failing with the storage's error when it cannot be
        read.
    """
    names = yield storage.list(keys.CERT_KEY_PREFIX)
    values = yield get_many(_TolerantReader(storage), names)
    found = []
    for key, raw in values.items():
        certified = None if raw is None else decode_stored(raw, key)
        if certified is not None:
            found.append((keys.host_of(key, keys.CERT_KEY_PREFIX), certified))
    return found


def served_names(host: str, certified: CertifiedKey) -> list[str]:
    """
    The names the certificate stored under ``host`` is served for:
    ``host``, and for a wildcard (``*.example.com``) its base name when the
    certificate holds it too (one entry in storage, both in the cache).
    """
    names = [host]
    if host.startswith("*.") and host[2:] in certified.names:
        names.append(host[2:])
    return names


def load_all(storage: IStorage, cache: CertificateCache) -> Deferred:
    """
    Put every stored certificate into ``cache`` (at start). One summary
    line is the caller's to log; the cache logs each at debug level only.

    :return: ``Deferred`` firing with the number loaded.
    """

    def put(found: list) -> int:
        for host, certified in found:
            cache.put(certified, served_names(host, certified), quiet=True)
        return len(found)

    return read_all(storage).addCallback(put)
