"""
``storage: consul``: an :class:`~kongacme.interfaces.IAtomicStorage` on
Consul's KV HTTP API, in the format of lua-resty-acme's consul adapter
(``lib/resty/acme/storage/consul.lua``, used by Kong), so that kongacme and
Kong nodes can share one Consul.

- A key lives at ``/v1/kv/<kv_path>/<key with "/" replaced by "-">``
  (:func:`kongacme.storage.keys.slash_to_dash`), percent-encoded in the URL
  (Consul decodes it; Kong sends it as is, and the stored key is the same).
- The value is the raw body of a ``PUT`` and comes back base64-encoded in the
  ``Value`` of a ``GET``'s JSON (``null`` for an empty value).
- A TTL is emulated as lua-resty-acme does: ``Flags`` holds the expiry in
  epoch milliseconds (``flags=floor((now + ttl) * 1000)``; 0 = no expiry),
  and a reader that meets an expired value deletes it with
  ``?cas=<ModifyIndex>`` (so a newer value is never deleted) and reports it
  absent. "Now" is the injected clock's; nodes sharing a Consul need synced
  clocks, as with Kong.
- ``add`` is a ``PUT ?cas=0`` (create only), or ``?cas=<ModifyIndex>`` over
  an expired value; ``compare_and_set``/``compare_and_delete`` read the
  value and its ``ModifyIndex`` and write with ``?cas=<ModifyIndex>``, which
  Consul applies only if nothing changed in between.
- ``list`` reads the prefix with ``?recurse`` (one request, values included,
  because only ``Flags`` says what has expired) and deletes the expired
  entries it meets; it returns the stored ("-") form of the keys. Entries
  nested deeper under ``kv_path`` (not written by Kong or kongacme, which
  never store a "/") are left out.

Differences from lua-resty-acme, all invisible to a Kong node sharing the
store: a value counts as expired from the millisecond in ``Flags`` on (Kong:
one millisecond later); an empty value reads as ``b""`` (Kong: absent); the
listing filters expired keys; errors are exceptions with the HTTP status.

Tested only against the fake of Consul in ``tests/consul_fake.py`` (served on a real
port and through StubTreq): no Consul server can be installed where this
project is tested.

Every request has a deadline (``timeout``) covering the whole answer.
Failures are :class:`ConsulUnavailable` when Consul cannot be reached, times
out or answers 5xx/429 (retry later), and :class:`ConsulError` when it
refuses the request (403 ACL, 400, 413 value too large) or answers nonsense.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from typing import Any, Optional
from urllib.parse import quote

import attrs
from twisted.internet import error as netError
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import (
    HTTPConnectionPool,
    RequestTransmissionFailed,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.http_headers import Headers
from zope.interface import implementer

from kongacme.storage.errors import StorageError, StorageUnavailable
from kongacme.acme.trust import make_http_client
from kongacme.config.storage import ConsulStorageConfig
from kongacme.failures import describe_failure
from kongacme.interfaces import IAtomicStorage, IStorage
from kongacme.response_body import read_body
from kongacme.validators import provides
from kongacme.storage._common import (
    check_key,
    check_prefix,
    check_ttl,
    check_value,
    expired,
    expiry,
)
from kongacme.storage.keys import slash_to_dash

_log = Logger()

#: Characters left unescaped in a key's URL segment besides letters,
#: digits and ``-_.~``: ``:`` and ``@`` keep Kong's keys readable in logs.
_SAFE = ":@"
#: Seconds an idle keep-alive connection to Consul is kept.
IDLE_CONNECTION_TIMEOUT = 30.0


class ConsulError(StorageError):
    """
    A Consul request failed: refused (403 ACL, 400 bad request, 413 value
    too large) or answered with something that is not Consul's format.

    :ivar method: the HTTP method.
    :ivar url: the URL (never holds the token, which goes in a header).
    :ivar reason: what went wrong, with Consul's own message when it gave
        one.
    :ivar status: the HTTP status, or ``None`` when there was no answer.
    """

    def __init__(self, method: str, url: str, reason: str, status: Optional[int] = None):
        self.method = method
        self.url = url
        self.reason = reason
        self.status = status
        super().__init__(str(self))

    def __str__(self) -> str:
        status = f" ({self.status})" if self.status is not None else ""
        return f"consul {self.method} {self.url}{status}: {self.reason}"


class ConsulUnavailable(ConsulError, StorageUnavailable):
    """
    Consul cannot serve the request now: unreachable, no complete answer
    within the timeout, or a 5xx/429 answer (e.g. "No cluster leader").
    Transient: the same request may succeed later.
    """


@attrs.frozen
class _Entry:
    """One key read back: its value, expiry (epoch seconds or ``None``) and ``ModifyIndex``."""

    value: bytes
    expires_at: Optional[float]
    modify_index: int


_UNREACHABLE = (
    netError.ConnectError,
    netError.ConnectionLost,
    netError.ConnectionClosed,
    netError.DNSLookupError,
    netError.TimeoutError,
    ResponseFailed,
    ResponseNeverReceived,
    RequestTransmissionFailed,
)


@implementer(IStorage, IAtomicStorage)
@attrs.define
class ConsulStorage:
    """
    Kong's Consul storage over an injected treq ``HTTPClient``.

    :ivar _http: a treq ``HTTPClient`` (or :class:`treq.testing.StubTreq`).
    :ivar _reactor: times the requests (``IReactorTime``).
    :ivar _base_url: ``http[s]://host:port``.
    :ivar _kv_path: the folder under ``/v1/kv/`` (slashes at either end are
        dropped; Kong's default ``acme``).
    :ivar _token: sent as ``X-Consul-Token``, or ``None``.
    :ivar _timeout: seconds for one request, answer included.
    :ivar _clock: "now" for the emulated TTLs; the reactor when ``None``.
    :ivar _pool: the connection pool :meth:`close` closes, if any.
    """

    _http: Any = attrs.field(repr=False)
    _reactor: IReactorTime = attrs.field(repr=False, validator=provides(IReactorTime))
    _base_url: str = "http://127.0.0.1:8500"
    _kv_path: str = attrs.field(default="acme", converter=lambda path: path.strip("/"))
    _token: Optional[str] = attrs.field(default=None, repr=False)
    _timeout: float = 2.0
    _clock: Optional[IReactorTime] = attrs.field(default=None, repr=False)
    _pool: Optional[HTTPConnectionPool] = attrs.field(default=None, repr=False)
    _folder_url: str = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if not self._timeout > 0:
            raise ValueError(f"timeout must be positive, not {self._timeout!r}")
        if self._clock is None:
            self._clock = self._reactor
        folder = quote(self._kv_path, safe="/" + _SAFE) + "/" if self._kv_path else ""
        self._folder_url = self._base_url.rstrip("/") + "/v1/kv/" + folder

    @classmethod
    def from_config(
        cls, config: ConsulStorageConfig, reactor: Any, clock: Optional[IReactorTime] = None
    ) -> "ConsulStorage":
        """
        The store ``storage_config.consul`` describes, with its own HTTP
        client: connections kept alive for :data:`IDLE_CONNECTION_TIMEOUT`
        seconds, HTTPS checked against the system's trust store (Kong's
        lua-resty-http verifies too, and has no option for another CA).

        :param reactor: provides ``IReactorTCP`` and ``IReactorTime``.
        :param clock: "now" for TTLs; ``reactor`` when ``None``.
        """
        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.cachedConnectionTimeout = IDLE_CONNECTION_TIMEOUT
        timeout = config.timeout / 1000.0
        host = f"[{config.host}]" if ":" in config.host else config.host
        scheme = "https" if config.https else "http"
        return cls(
            make_http_client(reactor, pool=pool, connect_timeout=timeout),
            reactor,
            base_url=f"{scheme}://{host}:{config.port}",
            kv_path=config.kv_path,
            token=config.token,
            timeout=timeout,
            clock=clock,
            pool=pool,
        )

    def close(self) -> Deferred[None]:
        """
        Close the kept-alive connections (when built by :meth:`from_config`).

        :return: ``Deferred`` firing once they are closed.
        """
        if self._pool is None:
            return succeed(None)
        return self._pool.closeCachedConnections()

    # -- HTTP --------------------------------------------------------------

    def _url(self, stored_key: str, query: str = "") -> str:
        return self._folder_url + quote(stored_key, safe=_SAFE) + (f"?{query}" if query else "")

    def _request(self, method: str, url: str, body: Optional[bytes] = None) -> Deferred[tuple[int, Headers, bytes]]:
        d = Deferred.fromCoroutine(self._exchange(method, url, body))

        def timed_out(result: Any, timeout: float) -> Failure:
            return Failure(ConsulUnavailable(method, url, f"no complete answer within {timeout * 1000:g} ms"))

        d.addTimeout(self._timeout, self._reactor, onTimeoutCancel=timed_out)

        def unreachable(failure: Failure) -> Failure:
            if failure.check(ConsulError) or not failure.check(*_UNREACHABLE):
                return failure
            raise ConsulUnavailable(method, url, describe_failure(failure))

        return d.addErrback(unreachable)

    async def _exchange(self, method: str, url: str, body: Optional[bytes]) -> tuple[int, Headers, bytes]:
        headers = {"X-Consul-Token": [self._token]} if self._token else {}
        response = await self._http.request(
            method, url, headers=headers, data=body, allow_redirects=False, unbuffered=True, reactor=self._reactor
        )
        data = await read_body(response)
        code = response.code
        if code >= 500 or code == 429:
            raise ConsulUnavailable(method, url, _message(data) or "server error", code)
        if code not in (200, 404):
            raise ConsulError(method, url, _refusal(code, data), code)
        return code, response.headers, data

    async def _answer(self, method: str, stored_key: str, query: str = "", body: Optional[bytes] = None) -> bool:
        """A ``PUT``/``DELETE`` and Consul's ``true``/``false``."""
        url = self._url(stored_key, query)
        _, _, data = await self._request(method, url, body)
        try:
            answer = json.loads(data)
        except ValueError:
            answer = None
        if not isinstance(answer, bool):
            raise ConsulError(method, url, f"expected true or false, got {data[:80]!r}", 200)
        return answer

    async def _read(self, key: str) -> tuple[Optional[_Entry], str]:
        """The entry under ``key`` (expired or not) and its stored key; ``None`` if absent."""
        stored = slash_to_dash(key)
        url = self._url(stored)
        code, _, data = await self._request("GET", url)
        if code == 404:
            return None, stored
        entries = _entries(data, "GET", url)
        if len(entries) != 1:
            raise ConsulError("GET", url, f"expected one entry, got {len(entries)}", code)
        return entries[0][1], stored

    def _flags(self, ttl: Optional[float]) -> str:
        expires_at = expiry(self._now(), ttl)
        # lua-resty-acme: string.format("flags=%d", (ngx.now() + ttl) * 1000).
        # At least 1: 0 means "no expiry".
        return "" if expires_at is None else "flags=%d" % (max(1, math.floor(expires_at * 1000)),)

    def _now(self) -> float:
        assert self._clock is not None
        return self._clock.seconds()

    def _live(self, entry: Optional[_Entry]) -> Optional[_Entry]:
        if entry is None or expired(entry.expires_at, self._now()):
            return None
        return entry

    async def _drop_expired(self, stored_key: str, entry: _Entry) -> None:
        """Delete an expired entry unless it changed since it was read; failures are only logged."""
        try:
            await self._answer("DELETE", stored_key, f"cas={entry.modify_index}")
        except ConsulError as e:
            _log.warn("could not delete expired consul key {key}: {error}", key=stored_key, error=str(e))

    # -- IStorage -----------------------------------------------------------

    def get(self, key: str) -> Deferred[Optional[bytes]]:
        """
        :return: ``Deferred`` firing with the value, or ``None`` when absent
            or expired (an expired value is deleted).
        """
        check_key(key)
        return Deferred.fromCoroutine(self._get(key))

    async def _get(self, key: str) -> Optional[bytes]:
        entry, stored = await self._read(key)
        if entry is None:
            return None
        if self._live(entry) is None:
            await self._drop_expired(stored, entry)
            return None
        return entry.value

    def set(self, key: str, value: bytes, ttl: Optional[float] = None) -> Deferred[None]:
        """
        ``PUT`` ``value``, with its expiry in ``Flags`` (none: 0).

        :return: ``Deferred`` firing with ``None``.
        """
        check_key(key)
        check_value(value)
        flags = self._flags(check_ttl(ttl))
        return Deferred.fromCoroutine(self._set(key, value, flags))

    async def _set(self, key: str, value: bytes, flags: str) -> None:
        stored = slash_to_dash(key)
        if not await self._answer("PUT", stored, flags, value):
            raise ConsulError("PUT", self._url(stored, flags), "Consul answered false to a plain write")

    def add(self, key: str, value: bytes, ttl: Optional[float] = None) -> Deferred[bool]:
        """
        Store ``value`` only if ``key`` is absent or expired: ``PUT
        ?cas=0``, or ``?cas=<ModifyIndex>`` over the expired value.

        :return: ``Deferred`` firing with ``True`` if stored.
        """
        check_key(key)
        check_value(value)
        flags = self._flags(check_ttl(ttl))
        return Deferred.fromCoroutine(self._add(key, value, flags))

    async def _add(self, key: str, value: bytes, flags: str) -> bool:
        entry, stored = await self._read(key)
        if entry is not None and self._live(entry) is not None:
            return False
        cas = 0 if entry is None else entry.modify_index
        return await self._answer("PUT", stored, _query(flags, f"cas={cas}"), value)

    def delete(self, key: str) -> Deferred[None]:
        """
        Remove ``key``; no error if absent.

        :return: ``Deferred`` firing with ``None``.
        """
        check_key(key)
        return Deferred.fromCoroutine(self._delete(key))

    async def _delete(self, key: str) -> None:
        await self._answer("DELETE", slash_to_dash(key))

    def list(self, prefix: str) -> Deferred[list[str]]:
        """
        :return: ``Deferred`` firing with the unexpired keys starting with
            ``prefix``, in their stored form ("/" replaced by "-", as Kong
            lists them).
        """
        check_prefix(prefix)
        return Deferred.fromCoroutine(self._list(prefix))

    async def _list(self, prefix: str) -> list[str]:
        url = self._url(slash_to_dash(prefix), "recurse")
        code, headers, data = await self._request("GET", url)
        if headers.hasHeader(b"x-consul-results-filtered-by-acls"):
            # Consul leaves out what the token may not read instead of
            # refusing: an empty list here would hide every certificate.
            raise ConsulError("GET", url, "results filtered by ACLs: the token lacks key:read on them", code)
        if code == 404:
            return []
        folder = self._kv_path + "/" if self._kv_path else ""
        now = self._now()
        live: list[str] = []
        stale: list[tuple[str, _Entry]] = []
        for full_key, entry in _entries(data, "GET", url):
            stored = full_key[len(folder):] if full_key.startswith(folder) else None
            if not stored or "/" in stored:
                continue
            if expired(entry.expires_at, now):
                stale.append((stored, entry))
            else:
                live.append(stored)
        if stale:
            await gatherResults([Deferred.fromCoroutine(self._drop_expired(s, e)) for s, e in stale])
        return live

    # -- IAtomicStorage -----------------------------------------------------

    def compare_and_set(
        self, key: str, expected: bytes, value: bytes, ttl: Optional[float] = None
    ) -> Deferred[bool]:
        """
        Set ``key`` to ``value`` only if its live value is ``expected``
        (``PUT ?cas=<ModifyIndex>`` of the value compared).

        :return: ``Deferred`` firing with ``True`` if set.
        """
        check_key(key)
        check_value(expected)
        check_value(value)
        flags = self._flags(check_ttl(ttl))
        return Deferred.fromCoroutine(self._compare_and_set(key, expected, value, flags))

    async def _compare_and_set(self, key: str, expected: bytes, value: bytes, flags: str) -> bool:
        entry, stored = await self._read(key)
        entry = self._live(entry)
        if entry is None or entry.value != expected:
            return False
        return await self._answer("PUT", stored, _query(flags, f"cas={entry.modify_index}"), value)

    def compare_and_delete(self, key: str, expected: bytes) -> Deferred[bool]:
        """
        Delete ``key`` only if its live value is ``expected`` (``DELETE
        ?cas=<ModifyIndex>`` of the value compared).

        :return: ``Deferred`` firing with ``True`` if deleted (Consul also
            answers ``True`` if someone else deleted it in between).
        """
        check_key(key)
        check_value(expected)
        return Deferred.fromCoroutine(self._compare_and_delete(key, expected))

    async def _compare_and_delete(self, key: str, expected: bytes) -> bool:
        entry, stored = await self._read(key)
        entry = self._live(entry)
        if entry is None or entry.value != expected:
            return False
        return await self._answer("DELETE", stored, f"cas={entry.modify_index}")


def _query(*parts: str) -> str:
    return "&".join(part for part in parts if part)


def _message(data: bytes) -> str:
    return data[:200].decode("utf-8", "replace").strip()


def _refusal(code: int, data: bytes) -> str:
    message = _message(data)
    if code == 403:
        hint = (
            "the token (storage_config.consul.token) is unknown to Consul"
            if "ACL not found" in message
            else "the token (storage_config.consul.token) lacks the permission"
        )
        return f"{message or 'forbidden'}: {hint}"
    if code == 413:
        return f"value too large for Consul: {message}"
    return message or "unexpected answer"


def _entries(data: bytes, method: str, url: str) -> list[tuple[str, _Entry]]:
    """Parse a ``GET``'s JSON array into ``(Key, entry)`` pairs."""
    try:
        items = json.loads(data)
        if not isinstance(items, list):
            raise ValueError("not a JSON array")
        result = []
        for item in items:
            flags = item["Flags"]
            index = item["ModifyIndex"]
            encoded = item["Value"]
            if not isinstance(flags, int) or not isinstance(index, int) or not isinstance(item["Key"], str):
                raise ValueError("Key, Flags or ModifyIndex of the wrong type")
            value = b"" if encoded is None else base64.b64decode(encoded, validate=True)
            result.append((item["Key"], _Entry(value, flags / 1000.0 if flags > 0 else None, index)))
        return result
    except (ValueError, TypeError, KeyError, binascii.Error) as e:
        raise ConsulError(method, url, f"not Consul's KV format ({e})", 200) from None


__all__ = ["ConsulError", "ConsulStorage", "ConsulUnavailable", "IDLE_CONNECTION_TIMEOUT"]
