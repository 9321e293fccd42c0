"""
The ``acme:`` section: Kong's ACME plugin ``config`` object, accepted
verbatim (every field, default and rule of ``kong/plugins/acme/schema.lua``
in Kong 3.x), plus a few kongacme extensions and stricter checks.

Where kongacme is stricter than Kong the rule says so in a comment.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

import attrs

from kongacme.config.fields import (
    REQUIRED,
    Bool,
    Context,
    FilePath,
    Invalid,
    ListOf,
    Num,
    OneOf,
    Str,
    Then,
    join,
)
from kongacme.config.records import (
    EMPTY,
    Field,
    Record,
    valid,
)
from kongacme.config.hosts import host_pattern
from kongacme.config.storage import STORAGE_CONFIG, StorageConfig

LETS_ENCRYPT_DIRECTORY = "https://acme-v02.api.letsencrypt.org/directory"
_LETS_ENCRYPT_HOSTS = ("acme-v02.api.letsencrypt.org", "acme-staging-v02.api.letsencrypt.org")


@attrs.frozen
class AccountKeyConfig:
    """
    ``account_key``: the ACME account's private key, used only when no
    account exists in storage yet.

    :ivar key_id: Kong: the id of a Kong ``keys`` entity (kongacme cannot
        read Kong's key store; kept for round-tripping).
    :ivar key_set: Kong: the key set of ``key_id``.
    :ivar pem: kongacme: the PEM private key (RSA or EC) inline.
    :ivar path: kongacme: absolute path of a PEM private key file.
    """

    key_id: str | None = None
    key_set: str | None = None
    pem: str | None = None
    path: str | None = None


@attrs.frozen
class AcmeConfig:
    """
    Kong's ACME plugin configuration; see the reference, section 1.

    ``api_uri`` is stored normalised (ending in ``/directory`` when it was
    given as a bare host); ``domains`` are lower-cased host patterns.
    """

    account_email: str
    account_key: AccountKeyConfig | None = None
    api_uri: str = LETS_ENCRYPT_DIRECTORY
    tos_accepted: bool = False
    eab_kid: str | None = None
    eab_hmac_key: str | None = None
    cert_type: str = "rsa"
    rsa_key_size: int = 4096
    renew_threshold_days: float = 14.0
    domains: tuple[str, ...] = ()
    allow_any_domain: bool = False
    fail_backoff_minutes: float = 5.0
    storage: str = "shm"
    storage_config: StorageConfig = attrs.Factory(StorageConfig)
    preferred_chain: str | None = None
    enable_ipv4_common_name: bool = True


_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")


def email_value(value: str) -> str:
    """``value`` if it looks like an email address, else :class:`Invalid`."""
    # Kong only checks for an "@"; a CA would refuse anything looser anyway.
    if not _EMAIL.match(value):
        raise Invalid("must be an email address")
    return value


def api_uri_value(value: str) -> str:
    """A CA directory URL, normalised (a bare host gets ``/directory``), else :class:`Invalid`."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Invalid("must be an http:// or https:// URL")
    # Kong appends "/directory" to every URL not ending in it, which breaks
    # CAs whose directory lives elsewhere (Pebble's /dir, ZeroSSL's /v2/DV90);
    # the case it exists for is the old default, a bare Let's Encrypt host.
    if parts.path in ("", "/") and not parts.query:
        return value.rstrip("/") + "/directory"
    return value


_BASE64URL = re.compile(r"^[A-Za-z0-9_-]+={0,2}$")


def base64url_value(value: str) -> str:
    """``value`` if it is base64url (an EAB HMAC key), else :class:`Invalid`."""
    # Padding is optional (ZeroSSL sends none); a length of 4n+1 characters
    # cannot be base64.
    if not _BASE64URL.match(value) or len(value.rstrip("=")) % 4 == 1:
        raise Invalid("must be base64url-encoded (letters, digits, '-' and '_')")
    return value


def _pem_key(value: str) -> str:
    # Parsed where it is used; here only catch a path or a certificate pasted
    # by mistake.
    if "-----BEGIN" not in value or "PRIVATE KEY-----" not in value:
        raise Invalid("must be a PEM private key (-----BEGIN ... PRIVATE KEY-----)")
    return value


def _unique(values: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(values))


def _check_account_key(values: dict[str, Any], ctx: Context, path: str) -> None:
    if not valid(values, "key_id", "pem", "path"):
        return
    if values["pem"] is not None and values["path"] is not None:
        ctx.problem(join(path, "pem"), "give either pem or path, not both")
    elif values["pem"] is None and values["path"] is None:
        if values["key_id"] is None:
            ctx.problem(join(path, "key_id"), "required (or give pem or path)")
        else:
            ctx.warn(
                join(path, "key_id"),
                "Kong key entities cannot be read by kongacme; ignored (give pem or path to choose the account key)",
            )


ACCOUNT_KEY = Record(
    AccountKeyConfig,
    (
        Field("key_id", Str()),
        Field("key_set", Str()),
        Field("pem", Then(Str(), _pem_key)),
        Field("path", FilePath(must_exist=True)),
    ),
    checks=(_check_account_key,),
)


def _check_acme(values: dict[str, Any], ctx: Context, path: str) -> None:
    if not valid(values, "api_uri", "tos_accepted"):
        pass
    elif urlsplit(values["api_uri"]).hostname in _LETS_ENCRYPT_HOSTS and not values["tos_accepted"]:
        # Kong's entity check compares the whole URL with the bare hosts, so
        # it never fires for the default ".../directory"; match the host.
        ctx.problem(
            join(path, "tos_accepted"),
            "terms of service must be accepted, see https://letsencrypt.org/repository/",
        )
    # kongacme: EAB needs both halves; Kong would send a broken JWS.
    for given, missing in (("eab_kid", "eab_hmac_key"), ("eab_hmac_key", "eab_kid")):
        if values[given] is not None and values[missing] is None:
            ctx.problem(join(path, missing), f"required when {given} is set")
    if not valid(values, "storage", "storage_config"):
        return
    storage = values["storage"]
    config: StorageConfig = values["storage_config"]
    if storage == "redis" and config.redis.host is None:
        ctx.problem(join(path, "storage_config.redis.host"), 'required when storage is "redis"')
    if storage == "vault":
        vault = config.vault
        if vault.auth_method == "kubernetes" and vault.auth_role is None:
            ctx.problem(join(path, "storage_config.vault.auth_role"), 'required when auth_method is "kubernetes"')
        if vault.auth_method == "token" and vault.token is None:
            ctx.problem(join(path, "storage_config.vault.token"), 'required when auth_method is "token"')


# Keys of the Kong plugin object around ``config``: a sign that the whole
# Admin API answer was pasted.
_PLUGIN_OBJECT_HINT = "a field of the Kong plugin object: put only the plugin's `config` object under acme:"
_PLUGIN_OBJECT_KEYS = (
    "config", "name", "id", "enabled", "protocols", "consumer", "service", "route",
    "created_at", "updated_at", "tags", "instance_name", "ordering", "consumer_group",
)

ACME = Record(
    AcmeConfig,
    (
        Field("account_email", Then(Str(), email_value), REQUIRED),
        Field("account_key", ACCOUNT_KEY),
        Field("api_uri", Then(Str(), api_uri_value), LETS_ENCRYPT_DIRECTORY),
        Field("tos_accepted", Bool(), False),
        Field("eab_kid", Str()),
        Field("eab_hmac_key", Then(Str(), base64url_value)),
        Field("cert_type", OneOf(("rsa", "ecc")), "rsa"),
        Field("rsa_key_size", OneOf((2048, 3072, 4096)), 4096),
        # kongacme: Kong has no bounds on these two; zero or less breaks
        # renewal and backoff.
        Field("renew_threshold_days", Num(min=0, min_exclusive=True), 14.0),
        Field("domains", Then(ListOf(Then(Str(), host_pattern), single_ok=True), _unique), ()),
        Field("allow_any_domain", Bool(), False),
        Field("fail_backoff_minutes", Num(min=0, min_exclusive=True), 5.0),
        Field("storage", OneOf(("kong", "shm", "redis", "consul", "vault")), "shm"),
        Field("storage_config", STORAGE_CONFIG, EMPTY),
        Field("preferred_chain", Str()),
        Field("enable_ipv4_common_name", Bool(), True),
    ),
    checks=(_check_acme,),
    hints={key: _PLUGIN_OBJECT_HINT for key in _PLUGIN_OBJECT_KEYS},
)

__all__ = [
    "ACME",
    "AccountKeyConfig",
    "AcmeConfig",
    "LETS_ENCRYPT_DIRECTORY",
]
