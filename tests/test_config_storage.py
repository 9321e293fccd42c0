"""
Tests for kongacme.config.storage: acme.storage_config and its backend
records.
"""

from __future__ import annotations

from kongacme.config import (
    ConsulStorageConfig,
    DaemonConfig,
    RedisExtraOptions,
    RedisStorageConfig,
    VaultStorageConfig,
    parse_config,
)
from tests.test_config_acme import AcmeTestCase, acme, minimal


class StorageConfigTests(AcmeTestCase):
    """
    Tests for acme.storage_config and its backend records.
    """

    def test_redis(self) -> None:
        """
        Every Redis field is read; host is lower-cased.
        """
        config, _ = acme(
            minimal(
                storage="redis",
                storage_config={
                    "redis": {
                        "host": "Redis.Internal",
                        "port": 6380,
                        "database": 2,
                        "username": "acme",
                        "password": "",
                        "ssl": True,
                        "ssl_verify": True,
                        "server_name": "redis.internal",
                        "timeout": 500,
                        "extra_options": {"namespace": "edge:", "scan_count": 100},
                    }
                },
            )
        )
        self.assertEqual(
            config.storage_config.redis,
            RedisStorageConfig(
                "redis.internal", 6380, 2, "acme", "", True, True, "redis.internal", 500, RedisExtraOptions("edge:", 100)
            ),
        )

    def test_redis_problems(self) -> None:
        """
        Redis rules: host required for redis storage, ports, database,
        timeout range, SNI not an IP, namespace not "kong_acme:"-prefixed,
        scan_count positive.
        """
        self.assertEqual(
            self.problems(
                minimal(
                    storage="redis",
                    storage_config={
                        "redis": {
                            "port": 70000,
                            "database": -1,
                            "ssl": "true",
                            "server_name": "10.0.0.1",
                            "timeout": 0,
                            "extra_options": {"namespace": "kong_acme:mine", "scan_count": 0},
                        }
                    },
                )
            ),
            [
                ("acme.storage_config.redis.port", "must be between 1 and 65535"),
                ("acme.storage_config.redis.database", "must be at least 0"),
                ("acme.storage_config.redis.ssl", "must be true or false"),
                ("acme.storage_config.redis.server_name", "must be a host name, not an IP address"),
                ("acme.storage_config.redis.timeout", "must be between 1 and 2147483646"),
                (
                    "acme.storage_config.redis.extra_options.namespace",
                    "namespace can't be prefixed with reserved word: kong_acme:",
                ),
                ("acme.storage_config.redis.extra_options.scan_count", "must be at least 1"),
            ],
        )
        self.assertEqual(
            self.problems(minimal(storage="redis")),
            [("acme.storage_config.redis.host", 'required when storage is "redis"')],
        )
        self.assertEqual(
            self.problems(minimal(storage_config={"redis": {"host": "not a host"}})),
            [("acme.storage_config.redis.host", "'not a host' is not a valid host name or IP address")],
        )

    def test_redis_host_not_required_for_other_storage(self) -> None:
        """
        Without storage: redis, the Redis record may stay empty.
        """
        self.assertIsNone(acme(minimal(storage="consul"))[0].storage_config.redis.host)

    def test_deprecated_redis_shorthands(self) -> None:
        """
        auth, ssl_server_name, namespace and scan_count are mapped onto
        password, server_name and extra_options, each with a warning.
        """
        config, warnings = acme(
            minimal(
                storage="redis",
                storage_config={
                    "redis": {
                        "host": "127.0.0.1",
                        "auth": "secret",
                        "ssl_server_name": "redis.example",
                        "namespace": "ns:",
                        "scan_count": 50,
                    }
                },
            )
        )
        redis = config.storage_config.redis
        self.assertEqual((redis.password, redis.server_name), ("secret", "redis.example"))
        self.assertEqual(redis.extra_options, RedisExtraOptions("ns:", 50))
        prefix = "acme.storage_config.redis"
        self.assertEqual(
            warnings,
            (
                f"{prefix}.auth: deprecated, use {prefix}.password instead",
                f"{prefix}.ssl_server_name: deprecated, use {prefix}.server_name instead",
                f"{prefix}.namespace: deprecated, use {prefix}.extra_options.namespace instead",
                f"{prefix}.scan_count: deprecated, use {prefix}.extra_options.scan_count instead",
            ),
        )

    def test_shorthand_with_null_extra_options(self) -> None:
        """
        A shorthand fills extra_options even when it is null.
        """
        config, _ = acme(minimal(storage_config={"redis": {"extra_options": None, "namespace": "x:"}}))
        self.assertEqual(config.storage_config.redis.extra_options, RedisExtraOptions("x:", 10))

    def test_shorthand_conflict(self) -> None:
        """
        A deprecated field and its replacement with different values are
        refused (as Kong does).
        """
        self.assertEqual(
            self.problems(
                minimal(storage_config={"redis": {"auth": "a", "password": "b", "scan_count": 5,
                                                  "extra_options": {"scan_count": 10}}})
            ),
            [
                (
                    "acme.storage_config.redis.auth",
                    "conflicts with acme.storage_config.redis.password (deprecated and new field set to different values)",
                ),
                (
                    "acme.storage_config.redis.scan_count",
                    "conflicts with acme.storage_config.redis.extra_options.scan_count "
                    "(deprecated and new field set to different values)",
                ),
            ],
        )

    def test_shorthand_echo_compared_raw(self) -> None:
        """
        A deprecated field equal to its replacement as written is no conflict;
        the value is then normalised by the new field.
        """
        config, warnings = acme(
            minimal(storage_config={"redis": {"ssl_server_name": "Redis.Example", "server_name": "Redis.Example"}})
        )
        self.assertEqual(config.storage_config.redis.server_name, "redis.example")
        self.assertEqual(warnings, ())

    def test_shorthand_problems(self) -> None:
        """
        Deprecated fields are checked like their replacements, at their own
        path.
        """
        self.assertEqual(
            self.problems(minimal(storage_config={"redis": {"namespace": "kong_acme:x", "scan_count": "10"}})),
            [
                ("acme.storage_config.redis.namespace", "namespace can't be prefixed with reserved word: kong_acme:"),
                ("acme.storage_config.redis.scan_count", "must be an integer"),
            ],
        )

    def test_consul(self) -> None:
        """
        Consul fields are read; timeout is a number of milliseconds.
        """
        config, _ = acme(
            minimal(
                storage="consul",
                storage_config={
                    "consul": {"https": True, "host": "consul", "port": 8501, "kv_path": "kong/acme", "timeout": 1500,
                               "token": "t"}
                },
            )
        )
        self.assertEqual(config.storage_config.consul, ConsulStorageConfig(True, "consul", 8501, "kong/acme", 1500.0, "t"))

    def test_vault(self) -> None:
        """
        Vault fields are read; kubernetes auth needs auth_role, token auth
        needs token.
        """
        config, _ = acme(
            minimal(
                storage="vault",
                storage_config={
                    "vault": {"host": "vault.internal", "auth_method": "kubernetes", "auth_role": "kong",
                              "auth_path": "k8s", "jwt_path": "/tmp/jwt", "tls_verify": False,
                              "tls_server_name": "vault.example"}
                },
            )
        )
        self.assertEqual(
            config.storage_config.vault,
            VaultStorageConfig(host="vault.internal", tls_verify=False, tls_server_name="vault.example",
                               auth_method="kubernetes", auth_path="k8s", auth_role="kong", jwt_path="/tmp/jwt"),
        )
        self.assertEqual(
            self.problems(minimal(storage="vault", storage_config={"vault": {"auth_method": "kubernetes"}})),
            [("acme.storage_config.vault.auth_role", 'required when auth_method is "kubernetes"')],
        )
        self.assertEqual(
            self.problems(minimal(storage="vault")),
            [("acme.storage_config.vault.token", 'required when auth_method is "token"')],
        )
        self.assertEqual(
            self.problems(minimal(storage_config={"vault": {"auth_method": "approle", "port": "8200"}})),
            [
                ("acme.storage_config.vault.port", "must be an integer"),
                ("acme.storage_config.vault.auth_method", "must be one of token, kubernetes"),
            ],
        )

    def test_storage_config_shapes(self) -> None:
        """
        storage_config and its records must be mappings.
        """
        self.assertEqual(self.problems(minimal(storage_config="redis")), [("acme.storage_config", "must be a mapping")])
        self.assertEqual(
            self.problems(minimal(storage_config={"shm": {"shm_name": ""}, "kong": {"x": 1}})),
            [("acme.storage_config.shm.shm_name", "must not be empty"), ("acme.storage_config.kong.x", "unknown field")],
        )

    def test_warnings_on_daemon_config(self) -> None:
        """
        Warnings end up in DaemonConfig.warnings.
        """
        daemon = parse_config({"acme": minimal(storage_config={"redis": {"auth": "pw"}})}, "/srv")
        self.assertIsInstance(daemon, DaemonConfig)
        self.assertEqual(len(daemon.warnings), 1)
        self.assertTrue(daemon.warnings[0].startswith("acme.storage_config.redis.auth: deprecated"))
