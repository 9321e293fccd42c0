"""
``acme.storage_config``: one record per storage backend, as in Kong's ACME
plugin schema, with the defaults lua-resty-acme applies to unset fields
(reference, section 4).

Only the record named by ``acme.storage`` is used, but all five are always
present (a Kong Admin API answer contains all of them, mostly ``null``).
"""

from __future__ import annotations

import attrs

from kongacme.config.fields import (
    Bool,
    Int,
    Invalid,
    Num,
    OneOf,
    Str,
    Then,
)
from kongacme.config.records import (
    EMPTY,
    Field,
    Record,
    Shorthand,
)
from kongacme.config.hosts import server_host, server_name

#: Kong's longest timeout (``typedefs.timeout``), in milliseconds.
MAX_TIMEOUT_MS = 2**31 - 2
RESERVED_NAMESPACE_PREFIX = "kong_acme:"
KUBERNETES_JWT_PATH = "/var/run/secrets/kubernetes.io/serviceaccount/token"


@attrs.frozen
class ShmStorageConfig:
    """
    ``shm``: in-process memory, lost on restart.

    :ivar shm_name: Kong's shared dict name; kept, not used.
    """

    shm_name: str = "kong"


@attrs.frozen
class KongStorageConfig:
    """
    ``kong``: in kongacme, the daemon's own persistent store (files under
    ``state_dir``). No options.
    """


@attrs.frozen
class RedisExtraOptions:
    """
    ``redis.extra_options``.

    :ivar namespace: prefix for every key; may not start with ``kong_acme:``.
    :ivar scan_count: ``COUNT`` for ``SCAN`` when listing keys.
    """

    namespace: str = ""
    scan_count: int = 10


@attrs.frozen
class RedisStorageConfig:
    """
    ``redis`` (Kong's shared Redis schema plus ``extra_options``).

    :ivar timeout: connect/read/write timeout in milliseconds.
    """

    host: str | None = None
    port: int = 6379
    database: int = 0
    username: str | None = None
    password: str | None = None
    ssl: bool = False
    ssl_verify: bool = False
    server_name: str | None = None
    timeout: int = 2000
    extra_options: RedisExtraOptions = attrs.Factory(RedisExtraOptions)


@attrs.frozen
class ConsulStorageConfig:
    """
    ``consul``: keys under ``/v1/kv/<kv_path>/``.

    :ivar timeout: request timeout in milliseconds.
    :ivar token: sent as ``X-Consul-Token``.
    """

    https: bool = False
    host: str = "127.0.0.1"
    port: int = 8500
    kv_path: str = "acme"
    timeout: float = 2000.0
    token: str | None = None


@attrs.frozen
class VaultStorageConfig:
    """
    ``vault``: a KV v2 engine, mount = first segment of ``kv_path``.

    :ivar timeout: request timeout in milliseconds.
    :ivar auth_method: ``token`` (use ``token``) or ``kubernetes`` (log in at
        ``/v1/auth/<auth_path>/login`` with ``auth_role`` and the JWT read
        from ``jwt_path``).
    """

    https: bool = False
    host: str = "127.0.0.1"
    port: int = 8200
    kv_path: str = "acme"
    timeout: float = 2000.0
    token: str | None = None
    tls_verify: bool = True
    tls_server_name: str | None = None
    auth_method: str = "token"
    auth_path: str = "kubernetes"
    auth_role: str | None = None
    jwt_path: str = KUBERNETES_JWT_PATH


@attrs.frozen
class StorageConfig:
    """
    ``storage_config``: the options of every backend.
    """

    shm: ShmStorageConfig = attrs.Factory(ShmStorageConfig)
    kong: KongStorageConfig = attrs.Factory(KongStorageConfig)
    redis: RedisStorageConfig = attrs.Factory(RedisStorageConfig)
    consul: ConsulStorageConfig = attrs.Factory(ConsulStorageConfig)
    vault: VaultStorageConfig = attrs.Factory(VaultStorageConfig)


def _namespace(value: str) -> str:
    # Kong refuses only its three reserved key prefixes; any "kong_acme:"
    # namespace would put our keys among the un-namespaced ones.
    if value.startswith(RESERVED_NAMESPACE_PREFIX):
        raise Invalid(f"namespace can't be prefixed with reserved word: {RESERVED_NAMESPACE_PREFIX}")
    return value


_HOST = Then(Str(), server_host)
_SNI = Then(Str(), server_name)
_PORT = Int(1, 65535)
_MS = Num(min=0, min_exclusive=True)

REDIS_EXTRA_OPTIONS = Record(
    RedisExtraOptions,
    (
        Field("namespace", Then(Str(allow_empty=True), _namespace), ""),
        Field("scan_count", Int(min=1), 10),
    ),
)

# Redis fields some Kong 3.x release (Enterprise, Konnect) defines and
# kongacme does not implement, with Kong's defaults: a value equal to the
# default is what the Admin API echoes and is silently accepted.
_REDIS_UNSUPPORTED: dict[str, object] = {
    "connect_timeout": 2000,
    "send_timeout": 2000,
    "read_timeout": 2000,
    "keepalive_pool_size": 256,
    "keepalive_backlog": None,
    "sentinel_master": None,
    "sentinel_role": None,
    "sentinel_nodes": None,
    "sentinel_username": None,
    "sentinel_password": None,
    "sentinel_addresses": None,
    "cluster_nodes": None,
    "cluster_addresses": None,
    "cluster_max_redirections": 5,
    "connection_is_proxied": False,
    "redis_proxy_type": None,
    "cloud_authentication": {"aws_is_serverless": True},
}

REDIS = Record(
    RedisStorageConfig,
    (
        Field("host", _HOST),
        Field("port", _PORT, 6379),
        Field("database", Int(min=0), 0),
        Field("username", Str()),
        Field("password", Str(allow_empty=True)),
        Field("ssl", Bool(), False),
        Field("ssl_verify", Bool(), False),
        Field("server_name", _SNI),
        # kongacme: at least 1 ms (Kong allows 0).
        Field("timeout", Int(1, MAX_TIMEOUT_MS), 2000),
        Field("extra_options", REDIS_EXTRA_OPTIONS, EMPTY),
    ),
    tolerated=_REDIS_UNSUPPORTED,
    # Kong 3.6 moved these; its Admin API still returns them next to the new
    # fields.
    shorthands=(
        Shorthand("auth", Str(allow_empty=True), ("password",)),
        Shorthand("ssl_server_name", _SNI, ("server_name",)),
        Shorthand("namespace", Then(Str(allow_empty=True), _namespace), ("extra_options", "namespace")),
        Shorthand("scan_count", Int(min=1), ("extra_options", "scan_count")),
    ),
)

CONSUL = Record(
    ConsulStorageConfig,
    (
        Field("https", Bool(), False),
        Field("host", _HOST, "127.0.0.1"),
        Field("port", _PORT, 8500),
        Field("kv_path", Str(), "acme"),
        Field("timeout", _MS, 2000.0),
        Field("token", Str()),
    ),
)

VAULT = Record(
    VaultStorageConfig,
    (
        Field("https", Bool(), False),
        Field("host", _HOST, "127.0.0.1"),
        Field("port", _PORT, 8200),
        Field("kv_path", Str(), "acme"),
        Field("timeout", _MS, 2000.0),
        Field("token", Str()),
        Field("tls_verify", Bool(), True),
        Field("tls_server_name", _SNI),
        Field("auth_method", OneOf(("token", "kubernetes")), "token"),
        Field("auth_path", Str(), "kubernetes"),
        Field("auth_role", Str()),
        Field("jwt_path", Str(), KUBERNETES_JWT_PATH),
    ),
)

STORAGE_CONFIG = Record(
    StorageConfig,
    (
        Field("shm", Record(ShmStorageConfig, (Field("shm_name", Str(), "kong"),)), EMPTY),
        Field("kong", Record(KongStorageConfig, ()), EMPTY),
        Field("redis", REDIS, EMPTY),
        Field("consul", CONSUL, EMPTY),
        Field("vault", VAULT, EMPTY),
    ),
)
