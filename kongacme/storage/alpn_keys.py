"""
tls-alpn-01 key authorizations, by identifier: in the issuing process's
memory (the TLS listener's fast path) and in the shared storage under
lua-resty-acme's ``<identifier>#tls-alpn-01`` keys, so whichever node the
CA reaches on port 443 can answer.
"""

from __future__ import annotations

from typing import Optional

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from kongacme.interfaces import IChallengeTokenStore, IStorage
from kongacme.storage import keys

log = Logger()


@implementer(IChallengeTokenStore)
@attrs.define
class TlsAlpnKeyAuthorizations:
    """
    :class:`IChallengeTokenStore` keyed by identifier (the "token" of its
    methods is the name the CA validates) for tls-alpn-01.

    :ivar _clock: "now" for the memory entries' expiry.
    :ivar storage: the shared storage (``None``: memory only, no ``acme``
        section yet); a reload may replace it.
    """

    _clock: IReactorTime
    storage: Optional[IStorage] = None
    _memory: dict[str, tuple[str, float]] = attrs.field(factory=dict, init=False)

    def get(self, identifier: str) -> Deferred:
        """
        ``Deferred`` of the pending key authorization for ``identifier``:
        this process's memory first, then the storage; ``None`` if none
        (absent, expired or corrupt).
        """
        entry = self._memory.get(identifier)
        if entry is not None:
            if self._clock.seconds() < entry[1]:
                return succeed(entry[0])
            del self._memory[identifier]
        if self.storage is None:
            return succeed(None)
        key = keys.tls_alpn01(identifier)

        def decode(value: Optional[bytes]) -> Optional[str]:
            if value is None:
                return None
            try:
                return keys.decode_key_authorization(value, key)
            except ValueError as e:
                log.warn("ignoring corrupt tls-alpn-01 value for {name}: {e}", name=identifier[:253], e=str(e))
                return None

        return self.storage.get(key).addCallback(decode)

    def put(self, identifier: str, key_authorization: str, ttl: float = keys.HTTP01_TTL) -> Deferred:
        """Publish for ``ttl`` seconds: in memory now, and in the storage."""
        self._memory[identifier] = (key_authorization, self._clock.seconds() + ttl)
        if self.storage is None:
            return succeed(None)
        return self.storage.set(keys.tls_alpn01(identifier), keys.encode_key_authorization(key_authorization), ttl)

    def remove(self, identifier: str) -> Deferred:
        """Forget ``identifier``'s key authorization, here and in the storage."""
        self._memory.pop(identifier, None)
        if self.storage is None:
            return succeed(None)
        return self.storage.delete(keys.tls_alpn01(identifier))
