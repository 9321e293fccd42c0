"""
``storage: vault``: an :class:`~kongacme.interfaces.IAtomicStorage` on a
Vault (or OpenBao) KV version 2 engine, laid out as Kong's adapter
(lua-resty-acme ``storage/vault.lua``) lays it out, so that kongacme and
Kong nodes can share one Vault.

Layout (Kong's):

- mount = first segment of ``kv_path``, the rest a folder: ``kv_path:
  secret/acme`` puts a key at ``/v1/secret/data/acme/<name>`` and its
  metadata at ``/v1/secret/metadata/acme/<name>``;
- ``<name>`` is the key with every ``/`` replaced by ``-``
  (:func:`kongacme.storage.keys.slash_to_dash`, lossy, as in Kong);
  characters Vault refuses in a path (control and other non-printable
  characters) and ``^`` itself are written ``^XX`` per UTF-8 byte, and the
  names ``.`` and ``..`` likewise. Kong's keys never contain any of these,
  so their names are Kong's exactly;
- the secret's data: ``{"value": <text>, "note": ...}`` — Kong's field
  names. Values that are not UTF-8 are stored as base64 with
  ``"encoding": "base64"`` added; a value with a TTL carries
  ``"expires_at": <epoch seconds>``. Kong reads ``value`` and ignores the
  rest;
- TTL: the key's metadata ``delete_version_after`` (whole seconds rounded
  up, at least 1 s: Kong writes ``"%dms"`` but Vault truncates that to
  seconds), which Vault applies to each version when it is written,
  and ``expires_at``, judged with the injected clock on every read
  (metadata and data are two requests, so a concurrent writer may change
  the metadata in between; the data's own expiry stays exact). A write
  whose version came out with the wrong kind of deletion time (none when
  a TTL was asked for, or one when none was) sets the metadata again and
  rewrites with CAS, once;
- ``add``: read, then write with ``options.cas`` = the current version (0
  for a key that never existed): atomic against every other CAS writer.
  Expired, deleted, tombstoned and corrupt entries count as absent;
- ``compare_and_set``: read, compare, write with ``cas`` = the version
  read;
- ``compare_and_delete``: read, compare, then write a *tombstone*
  ``{"deleted": true, "note": ...}`` (no ``value``) with ``cas`` = the
  version read. That write is the atomic step: no other writer's value can
  be lost, which a metadata delete (unconditional in Vault's API) cannot
  promise. The key's metadata stays behind, as after Vault's own
  ``delete_version_after``; Kong and kongacme both read a secret without
  ``value`` as absent, and the next ``add`` writes over it;
- ``delete``: ``DELETE`` of the metadata (every version), as Kong;
- ``list``: Vault's LIST (``GET ...?list=true``) of the folder, then a
  read of each matching key to leave out expired, deleted and tombstoned
  ones.

Kong's adapter is not atomic (its ``add`` never passes CAS, because its
helper turns a 404 into "absent") and keeps a ``delete_version_after`` set
once for good; this one is, and does not.
"""

from __future__ import annotations

import base64
import math
import re
from typing import Any, Optional
from urllib.parse import quote

import attrs
from treq.client import HTTPClient
from twisted.internet.defer import Deferred, DeferredSemaphore, FirstError, gatherResults, inlineCallbacks
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import HTTPConnectionPool
from zope.interface import implementer

from kongacme.config.storage import VaultStorageConfig
from kongacme.interfaces import IAtomicStorage, IStorage
from kongacme.storage._common import check_key, check_prefix, check_ttl, check_value, expired, expiry
from kongacme.storage._vaultapi import (
    KubernetesAuth,
    TokenAuth,
    VaultAPI,
    VaultAuthError,
    VaultError,
    VaultResponseError,
    VaultTLSPolicy,
    VaultUnavailable,
    make_vault_client,
)
from kongacme.storage.keys import slash_to_dash

#: The ``note`` field written with every value (Kong writes "managed by
#: lua-resty-acme"; nobody reads it).
NOTE = "managed by kongacme"
#: Vault keeps ``delete_version_after`` in whole seconds (it truncates
#: Kong's ``"%dms"``) and Kong never asks for less than 1 s.
MIN_TTL_SECONDS = 1
#: Keys read at once when ``list`` checks which are live.
LIST_CONCURRENCY = 16

_CAS_MISMATCH = "check-and-set parameter did not match"
_ESCAPED = re.compile(r"(?:\^[0-9A-F]{2})+")


def vault_name(key: str) -> str:
    """
    The secret's name for ``key`` (see the module docstring): Kong's
    ``/`` → ``-``, then ``^XX`` escapes for what Vault refuses.
    """
    name = slash_to_dash(key)
    if name in (".", ".."):
        return "^2E" * len(name)
    return "".join(c if c.isprintable() and c != "^" else _escape(c) for c in name)


def _escape(c: str) -> str:
    return "".join("^%02X" % b for b in c.encode("utf-8", "surrogatepass"))


def key_from_name(name: str) -> str:
    """The inverse of :func:`vault_name` (giving ``-`` for every ``/``)."""

    def unescape(match: re.Match[str]) -> str:
        try:
            return bytes.fromhex(match.group().replace("^", "")).decode("utf-8", "surrogatepass")
        except UnicodeDecodeError:
            return match.group()

    return _ESCAPED.sub(unescape, name)


def encode_entry(value: bytes, expires_at: Optional[float]) -> dict[str, Any]:
    """The secret's data for ``value`` (see the module docstring)."""
    data: dict[str, Any]
    try:
        data = {"value": value.decode("utf-8")}
    except UnicodeDecodeError:
        data = {"value": base64.b64encode(value).decode("ascii"), "encoding": "base64"}
    data["note"] = NOTE
    if expires_at is not None:
        data["expires_at"] = expires_at
    return data


TOMBSTONE: dict[str, Any] = {"deleted": True, "note": NOTE}


def decode_entry(data: Any) -> tuple[Optional[bytes], Optional[float]]:
    """
    ``(value, expires_at)`` from a secret's data; ``value`` is ``None`` for
    a tombstone or any secret without ``value`` (absent, as for Kong).

    :raises ValueError: when the data is not in this format.
    """
    if not isinstance(data, dict):
        raise ValueError(f"data is a {type(data).__name__}, not an object")
    if "value" not in data:
        return None, None
    text, encoding, expires_at = data["value"], data.get("encoding"), data.get("expires_at")
    if not isinstance(text, str):
        raise ValueError(f"value is a {type(text).__name__}, not a string")
    if expires_at is not None and (
        isinstance(expires_at, bool) or not isinstance(expires_at, (int, float)) or not math.isfinite(expires_at)
    ):
        raise ValueError(f"expires_at is not a number: {expires_at!r}")
    if encoding is None:
        return text.encode("utf-8", "surrogatepass"), expires_at
    if encoding != "base64":
        raise ValueError(f"unknown encoding {encoding!r}")
    try:
        return base64.b64decode(text, validate=True), expires_at
    except ValueError as e:
        raise ValueError(f"value is not base64 ({e})") from None


@attrs.frozen
class _Current:
    """What a key holds now: its ``version`` (0: never written) and live value."""

    version: int
    value: Optional[bytes]


def _delete_version_after(ttl: Optional[float]) -> str:
    # Rounded up, so that Vault never deletes a version before its
    # expires_at; "0s" clears the setting.
    return "0s" if ttl is None else "%ds" % max(MIN_TTL_SECONDS, math.ceil(ttl))


@implementer(IStorage, IAtomicStorage)
@attrs.define
class VaultStorage:
    """
    Kong's Vault storage (KV v2) over :class:`VaultAPI`, atomic where Kong's
    is not; see the module docstring for the layout and each operation.

    :ivar _api: the transport (client, timeout, authentication).
    :ivar _kv_path: Kong's ``kv_path``: mount, then an optional folder.
    :ivar _clock: "now" for ``expires_at``; the reactor in production.
    """

    _api: VaultAPI
    _kv_path: str
    _clock: IReactorTime
    _data_base: str = attrs.field(init=False, repr=False)
    _metadata_base: str = attrs.field(init=False, repr=False)

    log = Logger()

    def __attrs_post_init__(self) -> None:
        segments = [s for s in self._kv_path.split("/") if s]
        if not segments:
            raise ValueError(f"kv_path {self._kv_path!r} names no mount")
        mount, folder = quote(segments[0], safe=""), "".join("/" + quote(s, safe="") for s in segments[1:])
        self._data_base = f"/v1/{mount}/data{folder}/"
        self._metadata_base = f"/v1/{mount}/metadata{folder}/"

    @classmethod
    def from_config(
        cls,
        config: VaultStorageConfig,
        reactor: Any,
        *,
        clock: Optional[IReactorTime] = None,
        client: Optional[HTTPClient] = None,
        ca_bundle: Optional[str] = None,
        pool: Optional[HTTPConnectionPool] = None,
    ) -> "VaultStorage":
        """
        The store Kong's ``storage_config.vault`` describes.

        :param reactor: for connections and timeouts (and "now", unless
            ``clock`` is given).
        :param client: a treq ``HTTPClient`` to use instead of one made by
            :func:`make_vault_client` (which then gets ``ca_bundle`` and
            ``pool``).
        :param ca_bundle: PEM file of CAs to trust for ``https`` instead of
            the system store (a kongacme extension).
        """
        clock = reactor if clock is None else clock
        timeout = config.timeout / 1000.0
        if client is None:
            client = make_vault_client(
                reactor,
                tls_verify=config.tls_verify,
                tls_server_name=config.tls_server_name,
                ca_bundle=ca_bundle,
                connect_timeout=timeout,
                pool=pool,
            )
        auth: TokenAuth | KubernetesAuth
        if config.auth_method == "kubernetes":
            auth = KubernetesAuth(config.auth_path, config.auth_role, config.jwt_path, clock)
        else:
            auth = TokenAuth(config.token)
        host = f"[{config.host}]" if ":" in config.host else config.host
        base_url = f"{'https' if config.https else 'http'}://{host}:{config.port}"
        return cls(VaultAPI(client, reactor, base_url, auth, timeout), config.kv_path, clock)

    @property
    def api(self) -> VaultAPI:
        """The transport (its ``auth`` counts Kubernetes logins)."""
        return self._api

    # -- IStorage ---------------------------------------------------------

    def get(self, key: str) -> Deferred[Optional[bytes]]:
        """
        :return: ``Deferred`` firing with the value, or ``None`` when absent,
            expired, deleted or corrupt.
        """
        check_key(key)
        return self._read(key).addCallback(lambda current: current.value)

    def set(self, key: str, value: bytes, ttl: Optional[float] = None) -> Deferred[None]:
        """
        Write ``value`` (a new version), replacing any value and TTL.

        :return: ``Deferred`` firing with ``None``.
        """
        check_key(key)
        check_value(value)
        seconds = check_ttl(ttl)
        return self._write(key, value, seconds, None).addCallback(lambda _: None)

    def add(self, key: str, value: bytes, ttl: Optional[float] = None) -> Deferred[bool]:
        """
        Write ``value`` only if ``key`` is absent (or expired, deleted,
        corrupt): CAS on the version read.

        :return: ``Deferred`` firing with ``True`` if stored.
        """
        check_key(key)
        check_value(value)
        seconds = check_ttl(ttl)
        return self._swap(key, lambda live: live is None, value, seconds)

    def delete(self, key: str) -> Deferred[None]:
        """
        Delete every version and the metadata of ``key``; no error if absent.

        :return: ``Deferred`` firing with ``None``.
        """
        check_key(key)
        return self._api.request("DELETE", self._metadata_path(key)).addCallback(lambda _: None)

    def list(self, prefix: str) -> Deferred[list[str]]:
        """
        :return: ``Deferred`` firing with the live keys whose Vault name
            starts with ``prefix`` (``/`` given back as ``-``, as Kong).
        """
        check_prefix(prefix)
        return self._list(slash_to_dash(prefix))

    # -- IAtomicStorage ---------------------------------------------------

    def compare_and_set(
        self, key: str, expected: bytes, value: bytes, ttl: Optional[float] = None
    ) -> Deferred[bool]:
        """
        Write ``value`` only if the live value is ``expected``: CAS on the
        version that held it.

        :return: ``Deferred`` firing with ``True`` if set.
        """
        check_key(key)
        check_value(value)
        seconds = check_ttl(ttl)
        return self._swap(key, lambda live: live == expected, value, seconds)

    def compare_and_delete(self, key: str, expected: bytes) -> Deferred[bool]:
        """
        Delete ``key`` only if its live value is ``expected``, by writing a
        tombstone with CAS on the version that held it.

        :return: ``Deferred`` firing with ``True`` if deleted.
        """
        check_key(key)
        return self._swap(key, lambda live: live == expected, None, None)

    # -- implementation ---------------------------------------------------

    def _data_path(self, key: str) -> str:
        return self._data_base + quote(vault_name(key), safe="")

    def _metadata_path(self, key: str) -> str:
        return self._metadata_base + quote(vault_name(key), safe="")

    @inlineCallbacks
    def _read(self, key: str) -> Any:
        status, body = yield self._api.request("GET", self._data_path(key))
        secret = body.get("data") if isinstance(body, dict) else None
        metadata = secret.get("metadata") if isinstance(secret, dict) else None
        if isinstance(metadata, dict):
            version = metadata.get("version")
        else:
            version = 0 if status == 404 else None
        if isinstance(version, bool) or not isinstance(version, int):
            raise VaultResponseError(self._api.url(self._data_path(key)), "answer has no metadata.version", status)
        if status == 404:
            # Never written (version 0), or its latest version deleted or
            # destroyed (delete_version_after included).
            return _Current(version, None)
        try:
            value, expires_at = decode_entry(secret.get("data"))
        except ValueError as e:
            self.log.warn("ignoring corrupt Vault entry {key}: {reason}", key=key, reason=str(e))
            return _Current(version, None)
        if value is not None and expired(expires_at, self._clock.seconds()):
            value = None
        return _Current(version, value)

    @inlineCallbacks
    def _swap(self, key: str, wanted: Any, value: Optional[bytes], ttl: Optional[float]) -> Any:
        """Read, test the live value with ``wanted``, write (or tombstone) with CAS."""
        current = yield self._read(key)
        if not wanted(current.value):
            return False
        written = yield self._write(key, value, ttl, current.version)
        return written

    @inlineCallbacks
    def _write(self, key: str, value: Optional[bytes], ttl: Optional[float], cas: Optional[int]) -> Any:
        """
        Write a version (``value`` ``None``: a tombstone), with CAS unless
        ``cas`` is ``None``.

        :return: ``Deferred`` firing with ``False`` on a CAS mismatch.
        """
        if value is None:
            data = TOMBSTONE
        else:
            data = encode_entry(value, expiry(self._clock.seconds(), ttl))
        if ttl is not None:
            yield self._set_ttl(key, ttl)
        version, has_deletion = yield self._post(key, data, cas)
        if version is None:
            return False
        if value is not None and has_deletion != (ttl is not None):
            # Someone changed the metadata between our two requests (or the
            # key had a TTL and this value has none): set it again and
            # rewrite this same value over the version just written.
            self.log.debug("rewriting {key}: Vault's deletion time does not match the TTL", key=key)
            yield self._set_ttl(key, ttl)
            yield self._post(key, data, version)
        return True

    @inlineCallbacks
    def _set_ttl(self, key: str, ttl: Optional[float]) -> Any:
        after = _delete_version_after(ttl)
        status, body = yield self._api.request("POST", self._metadata_path(key), {"delete_version_after": after})
        if not 200 <= status < 300:
            raise VaultResponseError(self._api.url(self._metadata_path(key)), f"metadata refused: {body!r}", status)

    @inlineCallbacks
    def _post(self, key: str, data: dict[str, Any], cas: Optional[int]) -> Any:
        """:return: ``(version, has deletion time)``, ``(None, False)`` on a CAS mismatch."""
        payload: dict[str, Any] = {"data": data}
        if cas is not None:
            payload["options"] = {"cas": cas}
        status, body = yield self._api.request("POST", self._data_path(key), payload)
        errors = body.get("errors") if isinstance(body, dict) else None
        if status == 400 and any(_CAS_MISMATCH in str(e) for e in errors or ()):
            return (None, False)
        written = body.get("data") if status == 200 and isinstance(body, dict) else None
        version = written.get("version") if isinstance(written, dict) else None
        if isinstance(version, bool) or not isinstance(version, int):
            reason = f"write refused: HTTP {status} {errors or body!r}" if status != 200 else "answer has no version"
            raise VaultResponseError(self._api.url(self._data_path(key)), reason, status)
        return (version, bool(written.get("deletion_time")))

    @inlineCallbacks
    def _list(self, prefix: str) -> Any:
        status, body = yield self._api.request("GET", self._metadata_base + "?list=true")
        if status == 404:
            return []
        data = body.get("data") if isinstance(body, dict) else None
        names = data.get("keys") if isinstance(data, dict) else None
        if not isinstance(names, list):
            raise VaultResponseError(self._api.url(self._metadata_base), "list answer has no data.keys", status)
        # Names ending in "/" are folders (other kv_paths below this one).
        candidates = [
            key
            for key in (key_from_name(n) for n in names if isinstance(n, str) and not n.endswith("/"))
            if key.startswith(prefix)
        ]
        semaphore = DeferredSemaphore(LIST_CONCURRENCY)
        try:
            found = yield gatherResults([semaphore.run(self._read, key) for key in candidates], consumeErrors=True)
        except FirstError as e:
            failure: Failure = e.subFailure
            failure.raiseException()
        return [key for key, current in zip(candidates, found) if current.value is not None]


__all__ = [
    "KubernetesAuth",
    "TokenAuth",
    "VaultAPI",
    "VaultAuthError",
    "VaultError",
    "VaultResponseError",
    "VaultStorage",
    "VaultTLSPolicy",
    "VaultUnavailable",
    "key_from_name",
    "make_vault_client",
    "vault_name",
]
