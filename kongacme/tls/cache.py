"""
The in-process certificate cache read by every handshake.
"""

from __future__ import annotations

from typing import Callable, Iterable

from twisted.logger import Logger
from zope.interface import implementer

from kongacme.interfaces import ICertificateCache
from kongacme.tls.certs import CertifiedKey


@implementer(ICertificateCache)
class CertificateCache:
    """
    Names → :class:`CertifiedKey`, with wildcard entries and a fallback.

    Lookups are two dict probes at most: the exact name, then ``*.`` plus
    the name without its first label (a wildcard covers one label, as TLS
    clients check it). So the handshake cost does not grow with the number
    of certificates.

    :ivar fallback: served when nothing matches, and to clients without SNI.
    """

    log = Logger()

    def __init__(self, fallback: CertifiedKey):
        self.fallback = fallback
        self._by_name: dict[str, CertifiedKey] = {}
        self._listeners: list[Callable[[str, CertifiedKey | None], None]] = []

    def lookup(self, server_name: str | None) -> CertifiedKey:
        if server_name is None:
            return self.fallback
        by_name = self._by_name
        found = by_name.get(server_name)
        if found is not None:
            return found
        dot = server_name.find(".")
        if dot > 0:
            found = by_name.get("*" + server_name[dot:])
            if found is not None:
                return found
        return self.fallback

    def get(self, name: str) -> CertifiedKey | None:
        return self._by_name.get(name.lower())

    def put(self, certified_key: CertifiedKey, names: Iterable[str] | None = None, quiet: bool = False) -> None:
        """
        Serve ``certified_key`` for ``names`` (default: its own names).

        :param quiet: log the change at debug level (bulk loads: one line
            per certificate for 10,000 certificates cost a sixth of a cold
            start; the loader logs a summary instead).
        """
        emit = self.log.debug if quiet else self.log.info
        for name in names if names is not None else certified_key.names:
            name = name.lower()
            previous = self._by_name.get(name)
            self._by_name[name] = certified_key
            if previous is not certified_key:
                emit(
                    "certificate for {name} {action} ({source}, expires {not_after})",
                    name=name,
                    action="replaced" if previous is not None else "added",
                    source=certified_key.source,
                    not_after=certified_key.not_after.isoformat(),
                    log_unlimited=True,  # one per certificate change: never rate-limited (kongacme.logs)
                )
                self._notify(name, certified_key)

    def remove(self, name: str) -> None:
        name = name.lower()
        if self._by_name.pop(name, None) is not None:
            self.log.info("certificate for {name} removed", name=name, log_unlimited=True)
            self._notify(name, None)

    def names(self) -> list[str]:
        return list(self._by_name)

    def __len__(self) -> int:
        return len(self._by_name)

    def subscribe(self, listener: Callable[[str, CertifiedKey | None], None]) -> None:
        """
        Call ``listener(name, certified_key_or_None)`` after every change.
        """
        self._listeners.append(listener)

    def _notify(self, name: str, certified: CertifiedKey | None) -> None:
        for listener in self._listeners:
            try:
                listener(name, certified)
            except Exception:
                self.log.failure("certificate cache listener failed for {name}", name=name)
