"""
Storage: the :class:`~kongacme.interfaces.IStorage` providers behind Kong's
``storage`` setting, Kong's key names and value formats
(:mod:`kongacme.storage.keys`), and :func:`storage_from_config`.

Providers store plain bytes; everything that knows what a value means lives
in :mod:`kongacme.storage.keys`.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Optional

from twisted.internet.interfaces import IReactorTime

from kongacme.config.acme import AcmeConfig
from kongacme.interfaces import IStorage
from kongacme.storage import keys
from kongacme.storage.errors import StorageValueError, StoredCertificateError
from kongacme.storage.files import FileStorage
from kongacme.storage.memory import MemoryStorage

if TYPE_CHECKING:
    from kongacme.config.daemon import StorageEncryptionConfig

#: Subdirectory of the daemon's state directory used by ``storage: kong``.
STATE_SUBDIRECTORY = "storage"


def storage_from_config(
    acme_config: AcmeConfig,
    state_dir: str,
    clock: IReactorTime,
    encryption: "Optional[StorageEncryptionConfig]" = None,
) -> IStorage:
    """
    The storage provider named by ``acme.storage``, wrapped by
    :func:`kongacme.storage.encryption.encrypted` when ``encryption`` is
    enabled (private keys encrypted at rest).

    - ``shm``: :class:`MemoryStorage` (lost on restart).
    - ``kong``: :class:`FileStorage` in ``<state_dir>/storage``, created
      (mode 0700) if missing.
    - ``redis``: :class:`kongacme.storage.redis.RedisStorage` from
      ``storage_config.redis`` (connects on first use).
    - ``consul``: :class:`kongacme.storage.consul.ConsulStorage` from
      ``storage_config.consul`` (HTTP through ``clock``, the reactor).
    - ``vault``: :class:`kongacme.storage.vault.VaultStorage` from
      ``storage_config.vault`` (HTTP through ``clock``, the reactor).

    :param acme_config: the parsed ``acme:`` section.
    :param state_dir: the daemon's state directory.
    :param clock: "now" for TTLs; the reactor in production (``redis``
        needs the reactor: it connects through it).
    :param encryption: the daemon's ``storage_encryption`` section.
    :raises NotImplementedError: for a provider that does not exist yet.
    :raises OSError: if the ``kong`` directory cannot be created.
    :raises kongacme.storage.encryption.EncryptionKeyError: if the
        encryption key cannot be read (the config check makes that rare).
    """
    if encryption is not None and encryption.enabled:
        from kongacme.storage.encryption import encrypted, load_key

        key = load_key(encryption)
        return encrypted(_provider(acme_config, state_dir, clock), key)
    return _provider(acme_config, state_dir, clock)


def _provider(acme_config: AcmeConfig, state_dir: str, clock: IReactorTime) -> IStorage:
    name = acme_config.storage
    if name == "shm":
        return MemoryStorage(clock)
    if name == "kong":
        return FileStorage(os.path.join(state_dir, STATE_SUBDIRECTORY), clock)
    if name == "consul":
        from kongacme.storage.consul import ConsulStorage

        return ConsulStorage.from_config(acme_config.storage_config.consul, clock)
    if name == "redis":
        # Imported here: txredisapi is only needed by Redis users. ``clock``
        # is the reactor in the daemon (connections and timeouts).
        from kongacme.storage.redis import RedisStorage

        return RedisStorage.from_config(acme_config.storage_config.redis, clock)
    if name == "vault":
        from kongacme.storage.vault import VaultStorage

        return VaultStorage.from_config(acme_config.storage_config.vault, clock)
    # The seam: Redis, Consul and Vault providers arrive with the storage
    # milestone (issue 4) and are chosen here from acme_config.storage_config.
    raise NotImplementedError(f"storage {name!r} arrives with the storage milestone")


__all__ = [
    "FileStorage",
    "MemoryStorage",
    "STATE_SUBDIRECTORY",
    "StorageValueError",
    "StoredCertificateError",
    "keys",
    "storage_from_config",
]
