"""
kongacme's configuration: the model (frozen attrs classes), and the loader
that validates a YAML file into it.

``acme:`` takes Kong's ACME plugin ``config`` object verbatim, as Kong's
Admin API returns it.
"""

from kongacme.config.acme import AccountKeyConfig, AcmeConfig
from kongacme.config.daemon import (
    AdminConfig,
    DaemonConfig,
    FleetConfig,
    HTTPConfig,
    IssuanceConfig,
    ListenConfig,
    LoggingConfig,
    ProxyConfig,
    RouteConfig,
    StaticCertificate,
    TLSConfig,
)
from kongacme.config.load import load_config, parse_config
from kongacme.config.storage import (
    ConsulStorageConfig,
    KongStorageConfig,
    RedisExtraOptions,
    RedisStorageConfig,
    ShmStorageConfig,
    StorageConfig,
    VaultStorageConfig,
)

__all__ = [
    "AccountKeyConfig",
    "AcmeConfig",
    "AdminConfig",
    "ConsulStorageConfig",
    "DaemonConfig",
    "FleetConfig",
    "HTTPConfig",
    "IssuanceConfig",
    "KongStorageConfig",
    "ListenConfig",
    "LoggingConfig",
    "ProxyConfig",
    "RedisExtraOptions",
    "RedisStorageConfig",
    "RouteConfig",
    "ShmStorageConfig",
    "StaticCertificate",
    "StorageConfig",
    "TLSConfig",
    "VaultStorageConfig",
    "load_config",
    "parse_config",
]
