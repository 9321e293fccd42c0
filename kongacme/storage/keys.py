"""
Kong's storage key names and value formats, in one place (like certmagic's
KeyBuilder), so that kongacme and a Kong node can share one store.

Read from Kong's ``kong/plugins/acme/client.lua`` and
``reserved_words.lua`` and lua-resty-acme's ``challenge/http-01.lua`` and
``storage/*.lua``:

- ``kong_acme:account:<api_uri>:<b64>``: ``{"key": PEM}``, no TTL;
- ``kong_acme:cert_key:<host>``: ``{"key": PEM, "cert": PEM chain}``, no TTL;
- ``kong_acme:renew_config:<host>``: ``{"host": host, "expire_at": n}``, no TTL;
- ``kong_acme:renew_last_run``: ``YYYY-mm-dd HH:MM:SS`` local time, no TTL;
- ``kong_acme:fail_backoff:<host>``: ``"%d"`` epoch seconds, TTL = backoff;
- ``kong_acme:update_lock:<host>``: ``placeholder``, TTL 30 s;
- ``<token>#http-01``: the key authorization, TTL 3600 s (Kong serves it
  with ``ngx.say``, i.e. followed by a newline).

``<b64>`` is the account email in standard base64 with padding
(``ngx.encode_base64``); ``<api_uri>`` is the configured URI verbatim. PEM
keys are PKCS#8 (``-----BEGIN PRIVATE KEY-----``, what lua-resty-openssl's
``to_PEM("private")`` writes); ``cert`` is the whole chain, leaf first.
``expire_at`` is an integer (``ngx.time()`` based). Kong's cjson writes ``/``
as ``\\/``; both spellings decode the same.

Decoders raise :class:`~kongacme.storage.errors.StorageValueError` (a
``ValueError``) naming the key, so that a corrupt value can be logged and
skipped.
"""

from __future__ import annotations

import base64
import json
import math
import time
from typing import Any, Union

import attrs
from cryptography.hazmat.primitives import serialization

from kongacme.errors import CertificateError
from kongacme.storage.errors import StorageValueError, StoredCertificateError
from kongacme.tls.certs import CertifiedKey, load_certified_key

PREFIX = "kong_acme:"
ACCOUNT_PREFIX = "kong_acme:account:"
CERT_KEY_PREFIX = "kong_acme:cert_key:"
RENEW_CONFIG_PREFIX = "kong_acme:renew_config:"
RENEW_LAST_RUN = "kong_acme:renew_last_run"
FAIL_BACKOFF_PREFIX = "kong_acme:fail_backoff:"
UPDATE_LOCK_PREFIX = "kong_acme:update_lock:"
#: kongacme's own (Kong ignores it): which CA issued a host's certificate,
#: ``{"fingerprint", "directory"}`` (``issuance.fallback_issuers``).
ISSUED_BY_PREFIX = "kongacme:issued_by:"
HTTP01_SUFFIX = "#http-01"
#: lua-resty-acme's tls-alpn-01 key: ``<domain>#tls-alpn-01``, the key
#: authorization, TTL 3600 s (kongacme writes it; Kong's plugin does not
#: answer tls-alpn-01).
TLS_ALPN01_SUFFIX = "#tls-alpn-01"

#: Kong's ``update_lock`` value and TTL (seconds).
UPDATE_LOCK_VALUE = b"placeholder"
UPDATE_LOCK_TTL = 30.0
#: TTL of an http-01 key authorization (seconds).
HTTP01_TTL = 3600.0
#: Kong writes ``expire_at = now + 90 days`` whatever the certificate says.
KONG_RENEW_LIFETIME = 90 * 86400.0
#: ``ngx.localtime()``: local time, no zone.
RENEW_LAST_RUN_FORMAT = "%Y-%m-%d %H:%M:%S"


def account_key(api_uri: str, email: str) -> str:
    """
    ``kong_acme:account:<api_uri>:<base64(email)>``. ``api_uri`` must be the
    text Kong was configured with for a Kong node to find the same account.
    """
    encoded = base64.b64encode(email.encode("utf-8")).decode("ascii")
    return f"{ACCOUNT_PREFIX}{api_uri}:{encoded}"


def cert_key(host: str) -> str:
    """``kong_acme:cert_key:<host>``: a host's certificate chain and key."""
    return CERT_KEY_PREFIX + host


def renew_config(host: str) -> str:
    """``kong_acme:renew_config:<host>``: marks ``host`` for renewal."""
    return RENEW_CONFIG_PREFIX + host


def fail_backoff(host: str) -> str:
    """``kong_acme:fail_backoff:<host>``: no new order until it expires."""
    return FAIL_BACKOFF_PREFIX + host


def update_lock(host: str) -> str:
    """``kong_acme:update_lock:<host>``: one order per host at a time."""
    return UPDATE_LOCK_PREFIX + host


def issued_by(host: str) -> str:
    """Where the CA that issued ``host``'s certificate is recorded."""
    return ISSUED_BY_PREFIX + host


def http01_token(token: str) -> str:
    """``<token>#http-01``: an http-01 key authorization."""
    return token + HTTP01_SUFFIX


def tls_alpn01(identifier: str) -> str:
    """``<identifier>#tls-alpn-01``: a tls-alpn-01 key authorization."""
    return identifier + TLS_ALPN01_SUFFIX


def host_of(key: str, prefix: str) -> str:
    """
    The host part of a per-host key, e.g. ``host_of(k, CERT_KEY_PREFIX)``
    (Kong's ``load_renew_hosts``).

    :raises ValueError: if ``key`` does not start with ``prefix``.
    """
    if not key.startswith(prefix):
        raise ValueError(f"{key!r} does not start with {prefix!r}")
    return key[len(prefix):]


# -- values ---------------------------------------------------------------


def _json(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _object(value: bytes, source: str, fields: dict[str, type]) -> dict[str, Any]:
    if not isinstance(value, bytes):
        raise TypeError(f"value must be bytes, not {type(value).__name__}")
    try:
        obj = json.loads(value.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise StorageValueError(source, f"not JSON ({e})") from None
    if not isinstance(obj, dict):
        raise StorageValueError(source, f"expected a JSON object, got {type(obj).__name__}")
    for name, kind in fields.items():
        if name not in obj:
            raise StorageValueError(source, f"no {name!r} field")
        field = obj[name]
        if isinstance(field, bool) or not isinstance(field, kind):
            raise StorageValueError(source, f"field {name!r} has the wrong type ({type(field).__name__})")
    return obj


def _text(pem: Union[bytes, str]) -> str:
    return pem.decode("ascii") if isinstance(pem, bytes) else pem


def encode_account(key_pem: Union[bytes, str]) -> bytes:
    """The account value: ``{"key": PEM}``."""
    return _json({"key": _text(key_pem)})


def decode_account(value: bytes, source: str = "account") -> bytes:
    """
    The account's private key PEM, checked to parse.

    :raises StorageValueError: on wrong JSON or a key that does not parse
        (a :class:`StoredCertificateError`).
    """
    pem = _object(value, source, {"key": str})["key"].encode("utf-8")
    try:
        serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as e:
        raise StoredCertificateError(source, f"no valid unencrypted PEM private key ({e})") from None
    return pem


def encode_cert_key(certified: CertifiedKey) -> bytes:
    """A certificate value: ``{"key": PKCS#8 PEM, "cert": PEM chain}``."""
    return _json({"key": _text(certified.key_pem()), "cert": _text(certified.chain_pem())})


def decode_cert_key(value: bytes, source: str) -> CertifiedKey:
    """
    Parse a certificate value.

    :param source: the storage key, used in errors and as the result's
        ``source``.
    :raises StorageValueError: on wrong JSON; :class:`StoredCertificateError`
        (also a ``CertificateError``) on a truncated or mismatched PEM.
    """
    obj = _object(value, source, {"key": str, "cert": str})
    try:
        return load_certified_key(obj["cert"].encode("utf-8"), obj["key"].encode("utf-8"), source=source)
    except CertificateError as e:
        raise StoredCertificateError(source, e.reason) from None


@attrs.frozen
class RenewConfig:
    """
    A ``renew_config`` value.

    :ivar host: the host to renew.
    :ivar expire_at: epoch seconds Kong compares with the renewal
        threshold (Kong writes issuance time + 90 days).
    """

    host: str
    expire_at: float


def encode_renew_config(host: str, expire_at: float) -> bytes:
    """``{"host": host, "expire_at": <integer epoch seconds>}``."""
    return _json({"host": host, "expire_at": math.floor(expire_at)})


def decode_renew_config(value: bytes, source: str = "renew_config") -> RenewConfig:
    """
    :raises StorageValueError: on wrong JSON or field types.
    """
    obj = _object(value, source, {"host": str, "expire_at": (int, float)})
    return RenewConfig(host=obj["host"], expire_at=float(obj["expire_at"]))


def _number(value: bytes, source: str) -> float:
    if not isinstance(value, bytes):
        raise TypeError(f"value must be bytes, not {type(value).__name__}")
    try:
        number = float(value.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        raise StorageValueError(source, f"not a number: {value[:40]!r}") from None
    if not math.isfinite(number):
        raise StorageValueError(source, f"not a finite number: {value[:40]!r}")
    return number


def encode_backoff(until: float) -> bytes:
    """A backoff value: the end of the backoff, ``"%d"`` epoch seconds."""
    return b"%d" % (math.floor(until),)


def decode_backoff(value: bytes, source: str = "fail_backoff") -> float:
    """
    The end of a backoff in epoch seconds (any number Lua's ``tonumber``
    would read is accepted).

    :raises StorageValueError: if the value is not a number.
    """
    return _number(value, source)


def encode_renew_last_run(when: float) -> bytes:
    """``ngx.localtime()`` of ``when``: local time ``YYYY-mm-dd HH:MM:SS``."""
    return time.strftime(RENEW_LAST_RUN_FORMAT, time.localtime(when)).encode("ascii")


def decode_renew_last_run(value: bytes, source: str = RENEW_LAST_RUN) -> float:
    """
    :return: epoch seconds (whole seconds, read as local time).
    :raises StorageValueError: if the value is not in that format.
    """
    try:
        parsed = time.strptime(value.decode("ascii"), RENEW_LAST_RUN_FORMAT)
    except (UnicodeDecodeError, ValueError):
        raise StorageValueError(source, f"not a {RENEW_LAST_RUN_FORMAT} time: {value[:40]!r}") from None
    return time.mktime(parsed)


def encode_key_authorization(key_authorization: str) -> bytes:
    """An http-01 value: the key authorization (ASCII), stored as is."""
    return key_authorization.encode("ascii")


def decode_key_authorization(value: bytes, source: str = "http-01") -> str:
    """
    :raises StorageValueError: if the value is not ASCII.
    """
    try:
        return value.decode("ascii")
    except UnicodeDecodeError:
        raise StorageValueError(source, "key authorization is not ASCII") from None


# -- provider key transforms ----------------------------------------------

_REDIS_GLOB = frozenset("*?[]\\")


def redis_key(namespace: str, key: str) -> str:
    """
    Kong's Redis key: the namespace glued to the key, no separator
    (lua-resty-acme since 0.11: ``self.namespace .. k``).
    """
    return namespace + key


def redis_unkey(namespace: str, redis_name: str) -> str:
    """
    Inverse of :func:`redis_key`.

    :raises ValueError: if ``redis_name`` is not in ``namespace``.
    """
    return host_of(redis_name, namespace)


def redis_match(namespace: str, prefix: str) -> str:
    """
    The ``SCAN MATCH`` pattern for keys starting with ``prefix``: glob
    characters escaped so that the prefix is literal (Kong does not escape
    them; its hosts never contain any).
    """
    literal = namespace + prefix
    return "".join("\\" + c if c in _REDIS_GLOB else c for c in literal) + "*"


def slash_to_dash(key: str) -> str:
    """
    Kong's Consul and Vault key: every ``/`` replaced by ``-``. Not
    reversible: listing returns the replaced form, and ``a/b`` and ``a-b``
    name one entry. Only account keys (URL, base64) contain ``/``.
    """
    return key.replace("/", "-")
