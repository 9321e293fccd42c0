"""
http-01 key authorizations kept in the shared storage under Kong's
``<token>#http-01`` keys, so whichever node (kongacme or Kong) the CA
reaches can answer the challenge.
"""

from __future__ import annotations

from typing import Optional

import attrs
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from kongacme.interfaces import IChallengeTokenStore, IStorage
from kongacme.storage import keys

log = Logger()


@implementer(IChallengeTokenStore)
@attrs.define
class StorageChallengeTokenStore:
    """:class:`IChallengeTokenStore` over an :class:`IStorage`."""

    _storage: IStorage

    def get(self, token: str) -> Deferred:
        """``Deferred`` of the key authorization, or ``None`` (absent, expired or corrupt)."""

        def decode(value: Optional[bytes]) -> Optional[str]:
            if value is None:
                return None
            try:
                return keys.decode_key_authorization(value, keys.http01_token(token))
            except ValueError as e:
                log.warn("ignoring corrupt http-01 value for token {token}: {e}", token=token[:64], e=str(e))
                return None

        return self._storage.get(keys.http01_token(token)).addCallback(decode)

    def put(self, token: str, key_authorization: str, ttl: float = keys.HTTP01_TTL) -> Deferred:
        """Store for ``ttl`` seconds (Kong: 3600)."""
        return self._storage.set(keys.http01_token(token), keys.encode_key_authorization(key_authorization), ttl)

    def remove(self, token: str) -> Deferred:
        """Forget the token."""
        return self._storage.delete(keys.http01_token(token))


@implementer(IChallengeTokenStore)
@attrs.define
class SwitchableTokenStore:
    """
    The token store the HTTP listener holds for its lifetime, forwarding to
    ``target``, which a reload may replace (memory without ``acme``, the
    shared storage with it).
    """

    target: IChallengeTokenStore

    def get(self, token: str) -> Deferred:
        return self.target.get(token)

    def put(self, token: str, key_authorization: str, ttl: float = keys.HTTP01_TTL) -> Deferred:
        return self.target.put(token, key_authorization, ttl)

    def remove(self, token: str) -> Deferred:
        return self.target.remove(token)
