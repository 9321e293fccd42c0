"""
The error an external store raises when it cannot serve a request now.

Kept in a module of its own so that it can move to
:mod:`kongacme.storage.errors` unchanged once the other external providers
(Vault, Consul) raise it too; :mod:`kongacme.storage.redis` re-exports it.
"""

from __future__ import annotations


from kongacme.storage.errors import StorageUnavailable as _StorageUnavailable


class RedisUnavailable(_StorageUnavailable):
    """
    The storage server could not be reached, did not answer within the
    configured timeout, or refused to serve us (wrong password, database
    out of range, still loading). Nothing is known about whether the
    operation took effect; callers back off and try again later.

    :ivar store: which store, e.g. ``"redis 127.0.0.1:6379"``.
    :ivar reason: what went wrong, naming the operation and the last
        connection error when there is one.
    """

    def __init__(self, store: str, reason: str):
        self.store = store
        self.reason = reason
        super().__init__(f"{store} unavailable: {reason}")


#: Kept under the name the Redis provider exports.
StorageUnavailable = RedisUnavailable
