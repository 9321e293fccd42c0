"""
Tests for kongacme.config.acme and kongacme.config.storage: the ``acme:``
section, Kong's ACME plugin config accepted verbatim.
"""

from __future__ import annotations

import copy
import json
import os
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from kongacme.config import (
    AccountKeyConfig,
    AcmeConfig,
    ConsulStorageConfig,
    RedisExtraOptions,
    RedisStorageConfig,
    StorageConfig,
    VaultStorageConfig,
    load_config,
    parse_config,
)
from kongacme.errors import ConfigError

# GET /plugins/<id> on a Kong 3.9 Admin API: every field present, null when
# unset, the deprecated Redis fields echoed next to the new ones.
KONG_PLUGIN_JSON = """
{
  "consumer": null,
  "created_at": 1718366215,
  "enabled": true,
  "id": "5d1fe1a8-3c36-4b1f-b6b4-7a0a2c1c4f3e",
  "instance_name": null,
  "name": "acme",
  "ordering": null,
  "protocols": ["grpc", "grpcs", "http", "https"],
  "route": null,
  "service": null,
  "tags": null,
  "updated_at": 1718366215,
  "config": {
    "account_email": "ops@example.com",
    "account_key": null,
    "allow_any_domain": false,
    "api_uri": "https://acme-staging-v02.api.letsencrypt.org/directory",
    "cert_type": "rsa",
    "domains": ["example.com", "*.Example.com", "api.example.net"],
    "eab_hmac_key": null,
    "eab_kid": null,
    "enable_ipv4_common_name": true,
    "fail_backoff_minutes": 5,
    "preferred_chain": null,
    "renew_threshold_days": 14,
    "rsa_key_size": 4096,
    "storage": "redis",
    "storage_config": {
      "consul": {
        "host": null,
        "https": false,
        "kv_path": null,
        "port": null,
        "timeout": null,
        "token": null
      },
      "kong": {},
      "redis": {
        "auth": null,
        "database": 0,
        "extra_options": {"namespace": "", "scan_count": 10},
        "host": "redis.internal",
        "namespace": "",
        "password": null,
        "port": 6379,
        "scan_count": 10,
        "server_name": null,
        "ssl": false,
        "ssl_server_name": null,
        "ssl_verify": false,
        "timeout": 2000,
        "username": null
      },
      "shm": {"shm_name": "kong"},
      "vault": {
        "auth_method": "token",
        "auth_path": null,
        "auth_role": null,
        "host": null,
        "https": false,
        "jwt_path": null,
        "kv_path": null,
        "port": null,
        "timeout": null,
        "tls_server_name": null,
        "tls_verify": true,
        "token": null
      }
    },
    "tos_accepted": true
  }
}
"""

# The Redis fields a Kong Enterprise 3.x Admin API adds, at their defaults.
ENTERPRISE_REDIS_DEFAULTS = {
    "cloud_authentication": {
        "auth_provider": None,
        "aws_access_key_id": None,
        "aws_assume_role_arn": None,
        "aws_cache_name": None,
        "aws_is_serverless": True,
        "aws_region": None,
        "aws_role_session_name": None,
        "aws_secret_access_key": None,
        "azure_client_id": None,
        "azure_client_secret": None,
        "azure_tenant_id": None,
        "gcp_service_account_json": None,
    },
    "cluster_max_redirections": 5,
    "cluster_nodes": None,
    "connect_timeout": 2000,
    "connection_is_proxied": False,
    "keepalive_backlog": None,
    "keepalive_pool_size": 256,
    "read_timeout": 2000,
    "send_timeout": 2000,
    "sentinel_master": None,
    "sentinel_nodes": None,
    "sentinel_password": None,
    "sentinel_role": None,
    "sentinel_username": None,
}

LETS_ENCRYPT_TOS = "terms of service must be accepted, see https://letsencrypt.org/repository/"


def kong_config() -> dict[str, Any]:
    """
    A fresh copy of the ``config`` object of :data:`KONG_PLUGIN_JSON`.
    """
    config: dict[str, Any] = json.loads(KONG_PLUGIN_JSON)["config"]
    return config


def acme(config: dict[str, Any], base_dir: str = "/srv") -> tuple[AcmeConfig, tuple[str, ...]]:
    """
    Parse ``config`` as the acme section: the AcmeConfig and the warnings.
    """
    daemon = parse_config({"acme": config}, base_dir)
    assert daemon.acme is not None
    return daemon.acme, daemon.warnings


def minimal(**fields: Any) -> dict[str, Any]:
    """
    The smallest valid acme section, plus ``fields``.
    """
    return {"account_email": "ops@example.com", "tos_accepted": True, **fields}


class AcmeTestCase(SynchronousTestCase):
    def problems(self, config: object) -> list[tuple[str, str]]:
        """
        The problems reported for the acme section ``config``.
        """
        return self.assertRaises(ConfigError, parse_config, {"acme": config}, "/srv").problems


class KongPasteTests(AcmeTestCase):
    """
    Tests for accepting a config copied out of Kong's Admin API.
    """

    def test_kong_admin_api_config(self) -> None:
        """
        The config object of a Kong 3.9 plugin, with every backend and its
        nulls, loads; nulls take kongacme's defaults, echoed deprecated fields
        equal to the new ones cause no warning.
        """
        config, warnings = acme(kong_config())
        self.assertEqual(warnings, ())
        self.assertEqual(
            config,
            AcmeConfig(
                account_email="ops@example.com",
                api_uri="https://acme-staging-v02.api.letsencrypt.org/directory",
                tos_accepted=True,
                domains=("example.com", "*.example.com", "api.example.net"),
                storage="redis",
                storage_config=StorageConfig(redis=RedisStorageConfig(host="redis.internal")),
            ),
        )
        self.assertEqual(config.storage_config.consul, ConsulStorageConfig(False, "127.0.0.1", 8500, "acme", 2000.0))
        self.assertEqual(config.storage_config.vault.jwt_path, "/var/run/secrets/kubernetes.io/serviceaccount/token")

    def test_kong_file_as_json(self) -> None:
        """
        A JSON file whose acme key holds Kong's config loads with
        load_config, the numbers typed as the model says.
        """
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            json.dump({"acme": kong_config()}, f, indent=2)
        config = load_config(path).acme
        assert config is not None
        self.assertEqual(config.storage_config.redis.host, "redis.internal")
        self.assertIsInstance(config.renew_threshold_days, float)
        self.assertIsInstance(config.fail_backoff_minutes, float)
        self.assertIsInstance(config.rsa_key_size, int)

    def test_enterprise_redis_fields_at_defaults(self) -> None:
        """
        Redis fields only Kong Enterprise defines are accepted; at Kong's
        defaults they cause no warning.
        """
        data = kong_config()
        data["storage_config"]["redis"].update(copy.deepcopy(ENTERPRISE_REDIS_DEFAULTS))
        config, warnings = acme(data)
        self.assertEqual(warnings, ())
        self.assertEqual(config.storage_config.redis.host, "redis.internal")

    def test_enterprise_redis_fields_set(self) -> None:
        """
        Unsupported Redis fields set to something else are ignored with a
        warning naming each.
        """
        data = kong_config()
        redis = data["storage_config"]["redis"]
        redis.update(copy.deepcopy(ENTERPRISE_REDIS_DEFAULTS))
        redis["sentinel_master"] = "mymaster"
        redis["sentinel_nodes"] = [{"host": "sentinel", "port": 26379}]
        redis["connect_timeout"] = 500
        redis["cloud_authentication"]["auth_provider"] = "aws"
        _, warnings = acme(data)
        prefix = "acme.storage_config.redis."
        self.assertEqual(
            sorted(warnings),
            [
                f"{prefix}{name}: not supported by kongacme; ignored"
                for name in ("cloud_authentication", "connect_timeout", "sentinel_master", "sentinel_nodes")
            ],
        )

    def test_unknown_fields(self) -> None:
        """
        Fields no Kong version defines are errors, at any depth.
        """
        data = kong_config()
        data["renewal_days"] = 3
        data["storage_config"]["redis"]["extra_options"]["prefix"] = "x"
        data["storage_config"]["s3"] = {}
        self.assertEqual(
            self.problems(data),
            [
                ("acme.renewal_days", "unknown field"),
                ("acme.storage_config.s3", "unknown field"),
                ("acme.storage_config.redis.extra_options.prefix", "unknown field"),
            ],
        )

    def test_whole_plugin_object(self) -> None:
        """
        Pasting the whole plugin object instead of its config says what to do.
        """
        problems = self.problems(json.loads(KONG_PLUGIN_JSON))
        hint = "unknown field (a field of the Kong plugin object: put only the plugin's `config` object under acme:)"
        self.assertIn(("acme.config", hint), problems)
        self.assertIn(("acme.protocols", hint), problems)
        self.assertIn(("acme.account_email", "required"), problems)

    def test_empty_kong_record_as_list(self) -> None:
        """
        An empty record encoded as an empty list (Lua's ambiguous empty
        table) is accepted.
        """
        data = kong_config()
        data["storage_config"]["kong"] = []
        config, _ = acme(data)
        self.assertEqual(config.storage_config, StorageConfig(redis=RedisStorageConfig(host="redis.internal")))

    def test_vault_reference(self) -> None:
        """
        Kong vault references cannot be resolved and are refused.
        """
        self.assertEqual(
            self.problems(minimal(account_email="{vault://env/acme-email}")),
            [("acme.account_email", "Kong vault references are not supported; write the value itself")],
        )


class AcmeFieldTests(AcmeTestCase):
    """
    Tests for the rules of each top-level acme field.
    """

    def test_defaults(self) -> None:
        """
        A minimal section takes Kong's defaults for everything else.
        """
        config, warnings = acme(minimal())
        self.assertEqual(warnings, ())
        self.assertEqual(config, AcmeConfig(account_email="ops@example.com", tos_accepted=True))
        self.assertEqual(config.api_uri, "https://acme-v02.api.letsencrypt.org/directory")
        self.assertEqual((config.cert_type, config.rsa_key_size), ("rsa", 4096))
        self.assertEqual((config.renew_threshold_days, config.fail_backoff_minutes), (14.0, 5.0))
        self.assertEqual((config.domains, config.allow_any_domain, config.storage), ((), False, "shm"))
        self.assertEqual((config.preferred_chain, config.enable_ipv4_common_name), (None, True))
        self.assertEqual(config.storage_config, StorageConfig())
        self.assertEqual(config.storage_config.redis, RedisStorageConfig(None, 6379, 0, None, None, False, False, None, 2000))
        self.assertEqual(config.storage_config.redis.extra_options, RedisExtraOptions("", 10))
        self.assertEqual(
            config.storage_config.vault,
            VaultStorageConfig(
                False, "127.0.0.1", 8200, "acme", 2000.0, None, True, None, "token", "kubernetes", None,
                "/var/run/secrets/kubernetes.io/serviceaccount/token",
            ),
        )
        self.assertEqual(config.storage_config.shm.shm_name, "kong")

    def test_absent_or_null(self) -> None:
        """
        Without an acme section (or with acme: null) there is no AcmeConfig.
        """
        self.assertIsNone(parse_config({}, "/srv").acme)
        self.assertIsNone(parse_config({"acme": None}, "/srv").acme)

    def test_values(self) -> None:
        """
        Given values are kept (enums, numbers as floats, patterns
        lower-cased and de-duplicated).
        """
        config, _ = acme(
            minimal(
                api_uri="https://ca.example/acme/directory",
                eab_kid="kid-1",
                eab_hmac_key="c2VjcmV0X2tleV93aXRoXy1fYW5k",
                cert_type="ecc",
                rsa_key_size=2048,
                renew_threshold_days=30.5,
                domains=["A.example", "*.a.example", "a.example"],
                allow_any_domain=True,
                fail_backoff_minutes=1,
                storage="kong",
                preferred_chain="ISRG Root X1",
                enable_ipv4_common_name=False,
            )
        )
        self.assertEqual(
            config,
            AcmeConfig(
                account_email="ops@example.com",
                api_uri="https://ca.example/acme/directory",
                tos_accepted=True,
                eab_kid="kid-1",
                eab_hmac_key="c2VjcmV0X2tleV93aXRoXy1fYW5k",
                cert_type="ecc",
                rsa_key_size=2048,
                renew_threshold_days=30.5,
                domains=("a.example", "*.a.example"),
                allow_any_domain=True,
                fail_backoff_minutes=1.0,
                storage="kong",
                preferred_chain="ISRG Root X1",
                enable_ipv4_common_name=False,
            ),
        )

    def test_account_email(self) -> None:
        """
        account_email is required and must look like an email address.
        """
        self.assertEqual(self.problems({"tos_accepted": True}), [("acme.account_email", "required")])
        self.assertEqual(
            self.problems({"account_email": None, "tos_accepted": True}), [("acme.account_email", "required")]
        )
        for bad in ("ops", "ops@", "@example.com", "o ps@example.com", "a@b@c"):
            self.assertEqual(
                self.problems(minimal(account_email=bad)), [("acme.account_email", "must be an email address")]
            )

    def test_api_uri_normalised(self) -> None:
        """
        "/directory" is appended to a bare host; other paths (Pebble's /dir)
        are kept.
        """
        cases = {
            "https://acme.example": "https://acme.example/directory",
            "https://acme.example/": "https://acme.example/directory",
            "https://acme.example/directory": "https://acme.example/directory",
            "https://127.0.0.1:14000/dir": "https://127.0.0.1:14000/dir",
            "http://localhost:4001/directory": "http://localhost:4001/directory",
        }
        for given, stored in cases.items():
            self.assertEqual(acme(minimal(api_uri=given))[0].api_uri, stored)

    def test_api_uri_invalid(self) -> None:
        """
        api_uri must be an http(s) URL with a host.
        """
        for bad in ("acme.example/directory", "ftp://acme.example/", "https:///directory"):
            self.assertEqual(
                self.problems(minimal(api_uri=bad)), [("acme.api_uri", "must be an http:// or https:// URL")]
            )

    def test_lets_encrypt_needs_tos(self) -> None:
        """
        Let's Encrypt (production or staging, any path) needs tos_accepted;
        other CAs do not at load time.
        """
        for uri in (None, "https://acme-v02.api.letsencrypt.org", "https://acme-staging-v02.api.letsencrypt.org/directory"):
            self.assertEqual(
                self.problems({"account_email": "ops@example.com", "api_uri": uri}),
                [("acme.tos_accepted", LETS_ENCRYPT_TOS)],
            )
        config, _ = acme({"account_email": "ops@example.com", "api_uri": "https://127.0.0.1:14000/dir"})
        self.assertFalse(config.tos_accepted)

    def test_eab(self) -> None:
        """
        eab_hmac_key must be base64url; eab_kid and eab_hmac_key go together.
        """
        self.assertEqual(
            self.problems(minimal(eab_kid="kid", eab_hmac_key="not+base64/url")),
            [("acme.eab_hmac_key", "must be base64url-encoded (letters, digits, '-' and '_')")],
        )
        self.assertEqual(self.problems(minimal(eab_kid="kid")), [("acme.eab_hmac_key", "required when eab_kid is set")])
        self.assertEqual(
            self.problems(minimal(eab_hmac_key="a2V5")), [("acme.eab_kid", "required when eab_hmac_key is set")]
        )
        self.assertEqual(
            self.problems(minimal(eab_kid="kid", eab_hmac_key="abcde")),
            [("acme.eab_hmac_key", "must be base64url-encoded (letters, digits, '-' and '_')")],
        )
        self.assertEqual(acme(minimal(eab_kid="k", eab_hmac_key="a2V5X2lk=="))[0].eab_hmac_key, "a2V5X2lk==")

    def test_enums_and_numbers(self) -> None:
        """
        cert_type, rsa_key_size and storage are enums; renew_threshold_days
        and fail_backoff_minutes must be > 0; booleans must be booleans.
        """
        self.assertEqual(
            self.problems(
                minimal(
                    cert_type="ec",
                    rsa_key_size=1024,
                    renew_threshold_days=0,
                    allow_any_domain="no",
                    fail_backoff_minutes=-5,
                    storage="s3",
                    preferred_chain="",
                    enable_ipv4_common_name=1,
                )
            ),
            [
                ("acme.cert_type", "must be one of rsa, ecc"),
                ("acme.rsa_key_size", "must be one of 2048, 3072, 4096"),
                ("acme.renew_threshold_days", "must be greater than 0"),
                ("acme.allow_any_domain", "must be true or false"),
                ("acme.fail_backoff_minutes", "must be greater than 0"),
                ("acme.storage", "must be one of kong, shm, redis, consul, vault"),
                ("acme.preferred_chain", "must not be empty"),
                ("acme.enable_ipv4_common_name", "must be true or false"),
            ],
        )
        self.assertEqual(self.problems(minimal(rsa_key_size="4096")), [("acme.rsa_key_size", "must be one of 2048, 3072, 4096")])
        self.assertEqual(acme(minimal(rsa_key_size=3072.0))[0].rsa_key_size, 3072)

    def test_domains(self) -> None:
        """
        domains are exact names or a leftmost *. wildcard, each checked.
        """
        self.assertEqual(
            self.problems(minimal(domains=["ok.example", "*.*.example", "example.*", "ex ample.com", 5])),
            [
                ("acme.domains[1]", "wildcard must be a single leftmost label, as in *.example.com"),
                ("acme.domains[2]", "wildcard must be a single leftmost label, as in *.example.com"),
                ("acme.domains[3]", "'ex ample.com' is not a valid host name"),
                ("acme.domains[4]", "must be a string"),
            ],
        )
        self.assertEqual(acme(minimal(domains="One.example"))[0].domains, ("one.example",))

    def test_many_problems_collected(self) -> None:
        """
        Problems in fields, in nested storage records and in cross-field rules
        are all reported together.
        """
        self.assertEqual(
            self.problems(
                {
                    "account_email": "nobody",
                    "eab_kid": "k",
                    "cert_type": "dsa",
                    "storage_config": {"redis": {"port": 0}, "consul": {"timeout": 0}},
                }
            ),
            [
                ("acme.account_email", "must be an email address"),
                ("acme.cert_type", "must be one of rsa, ecc"),
                ("acme.storage_config.redis.port", "must be between 1 and 65535"),
                ("acme.storage_config.consul.timeout", "must be greater than 0"),
                ("acme.tos_accepted", LETS_ENCRYPT_TOS),
                ("acme.eab_hmac_key", "required when eab_kid is set"),
            ],
        )


class AccountKeyTests(AcmeTestCase):
    """
    Tests for acme.account_key: Kong's key_id/key_set, kongacme's pem/path.
    """

    PEM = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEE\n-----END EC PRIVATE KEY-----\n"

    def test_pem(self) -> None:
        """
        An inline PEM private key is kept.
        """
        config, warnings = acme(minimal(account_key={"pem": self.PEM}))
        self.assertEqual(config.account_key, AccountKeyConfig(pem=self.PEM))
        self.assertEqual(warnings, ())

    def test_path(self) -> None:
        """
        A key file path is resolved against the config directory and must
        exist.
        """
        here = os.path.dirname(os.path.abspath(__file__))
        config, _ = acme(minimal(account_key={"path": os.path.basename(__file__), "key_id": None}), here)
        self.assertEqual(config.account_key, AccountKeyConfig(path=os.path.abspath(__file__)))
        self.assertEqual(
            self.problems(minimal(account_key={"path": "account.key"})),
            [("acme.account_key.path", "file not found: /srv/account.key")],
        )

    def test_key_id_only(self) -> None:
        """
        A Kong key entity reference is accepted but cannot be read: warned.
        """
        config, warnings = acme(minimal(account_key={"key_id": "my-key", "key_set": "acme"}))
        self.assertEqual(config.account_key, AccountKeyConfig(key_id="my-key", key_set="acme"))
        self.assertEqual(
            warnings,
            (
                "acme.account_key.key_id: Kong key entities cannot be read by kongacme; ignored "
                "(give pem or path to choose the account key)",
            ),
        )

    def test_problems(self) -> None:
        """
        The record needs key_id, pem or path; pem and path exclude each other;
        pem must be a PEM private key.
        """
        self.assertEqual(
            self.problems(minimal(account_key={"key_set": "acme"})),
            [("acme.account_key.key_id", "required (or give pem or path)")],
        )
        self.assertEqual(
            self.problems(minimal(account_key={"pem": self.PEM, "path": os.path.abspath(__file__)})),
            [("acme.account_key.pem", "give either pem or path, not both")],
        )
        self.assertEqual(
            self.problems(minimal(account_key={"pem": "/etc/account.key"})),
            [("acme.account_key.pem", "must be a PEM private key (-----BEGIN ... PRIVATE KEY-----)")],
        )
