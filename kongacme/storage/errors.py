"""
Exceptions of the storage layer, small classes with fields.

They live here rather than in :mod:`kongacme.errors` so that storage stays
one self-contained package; :mod:`kongacme.storage` re-exports them.
"""

from __future__ import annotations

from kongacme.errors import CertificateError


class StorageValueError(ValueError):
    """
    A value read from storage is not in the format its key calls for
    (wrong JSON, missing field, truncated PEM, not a number).

    Corrupt values are meant to be reported and skipped: callers catch this
    (or ``ValueError``), log it naming :attr:`key`, and carry on.

    :ivar key: the storage key the value was read from (or another
        description of where it came from).
    :ivar reason: what is wrong with it.
    """

    def __init__(self, key: str, reason: str):
        self.key = key
        self.reason = reason
        super().__init__(f"{key}: {reason}")


class StoredCertificateError(StorageValueError, CertificateError):
    """
    A stored certificate or private key does not parse, or the two do not
    belong together. Both a :class:`StorageValueError` and a
    :class:`kongacme.errors.CertificateError` (whose ``source`` is the key).
    """

    def __init__(self, key: str, reason: str):
        self.source = key
        StorageValueError.__init__(self, key, reason)


class StorageError(Exception):
    """
    A storage server refused or failed a request (every networked
    provider's errors derive from this, so callers catch one type).
    """


class StorageUnavailable(StorageError):
    """
    The storage server cannot serve the request now: unreachable, timed
    out, or answering 5xx. Callers keep serving what they hold, back off,
    and retry; it clears by itself when the server returns.
    """
