"""
What storage wrappers (encryption, instrumentation) share: the wrapped
provider, and every attribute they do not define forwarded to it
(``close``, ``last_error``, Redis's pub/sub…).
"""

from __future__ import annotations

from typing import Any

from kongacme.interfaces import IStorage


class ForwardingWrapper:
    """Mixin for an attrs class whose ``_storage`` field is the wrapped provider."""

    _storage: IStorage

    @property
    def wrapped(self) -> IStorage:
        """The provider being wrapped."""
        return self._storage

    def __getattr__(self, name: str) -> Any:
        # Only reached for attributes the wrapper lacks; private names are
        # never forwarded (attrs and copy probe them before __init__ ran).
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._storage, name)
