"""
HTTP transport to a Vault (or OpenBao) server for
:mod:`kongacme.storage.vault`: JSON requests over an injected treq
``HTTPClient`` with a timeout on every request, token and Kubernetes
authentication (the login token reused until its lease nears its end), the
TLS policy behind ``https``/``tls_verify``/``tls_server_name``, and the
errors a caller sees.
"""

from __future__ import annotations

import json
from typing import Any, Optional, Union
from urllib.parse import quote

import attrs
from treq.client import HTTPClient
from twisted.internet import defer
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from kongacme.acme.trust import load_trust_root
from kongacme.failures import describe_failure
from kongacme.net import client_tls
from kongacme.response_body import read_body
from kongacme.storage.errors import StorageError, StorageUnavailable

#: Seconds a pooled connection may stay idle; well below Vault's default
#: listener ``idle_timeout`` (5 minutes) so that a POST never goes out on a
#: connection the server has already dropped (Twisted retries only GETs).
POOL_IDLE_SECONDS = 30.0

#: Log in again this many seconds before the token's lease ends...
REFRESH_MARGIN = 60.0
#: ...or, for short leases, when only this share of it is left.
REFRESH_FRACTION = 0.2


class VaultError(StorageError):
    """
    Talking to Vault failed. Subclasses say how.

    :ivar url: the request's URL (without query).
    :ivar reason: what went wrong, in words.
    """

    def __init__(self, url: str, reason: str):
        self.url = url
        self.reason = reason
        super().__init__(f"{url}: {reason}")


class VaultUnavailable(VaultError, StorageUnavailable):
    """
    Vault cannot be reached or cannot answer now: connection refused or
    lost, timeout, TLS handshake failure, HTTP 5xx (sealed, standby) or 429.
    Worth retrying later.
    """


class VaultAuthError(VaultError):
    """
    Vault refused our credentials: HTTP 401/403 (after one fresh login for
    Kubernetes auth), a refused login, or an unreadable JWT file.
    """


class VaultResponseError(VaultError):
    """
    Vault answered something this client cannot use: an unexpected status
    (e.g. no secrets engine mounted at the ``kv_path`` mount) or a body that
    is not the JSON expected.

    :ivar status: the HTTP status, or ``None``.
    """

    def __init__(self, url: str, reason: str, status: Optional[int] = None):
        self.status = status
        super().__init__(url, reason)


def _errors(body: Any) -> str:
    if isinstance(body, dict) and isinstance(body.get("errors"), list) and body["errors"]:
        return "; ".join(str(e) for e in body["errors"])
    return ""


def _reason(status: int, body: Any) -> str:
    detail = _errors(body)
    return f"HTTP {status}" + (f": {detail}" if detail else "")


# -- authentication -------------------------------------------------------


@attrs.define
class TokenAuth:
    """
    ``auth_method: token``: one fixed token, sent as ``X-Vault-Token``.

    :ivar _token: the token, or ``None`` to send none.
    """

    _token: Optional[str] = attrs.field(repr=False)

    def token(self, api: "VaultAPI") -> Deferred[Optional[str]]:
        """:return: ``Deferred`` firing with the token."""
        return defer.succeed(self._token)

    def forget(self, token: Optional[str]) -> bool:
        """A fixed token cannot be replaced: ``False``."""
        return False


@attrs.define
class KubernetesAuth:
    """
    ``auth_method: kubernetes``: log in at ``/v1/auth/<auth_path>/login``
    with ``{"role", "jwt"}`` (the JWT read from ``jwt_path`` at each login,
    since Kubernetes rotates projected tokens) and reuse the client token
    until its lease is nearly over (Kong logs in for every operation).
    Concurrent callers share one login.

    :ivar _clock: "now" for the lease.
    :ivar logins: how many logins succeeded (for logs and tests).
    """

    _auth_path: str
    _role: Optional[str]
    _jwt_path: str
    _clock: IReactorTime
    logins: int = attrs.field(default=0, init=False)
    _token: Optional[str] = attrs.field(default=None, init=False, repr=False)
    _refresh_at: Optional[float] = attrs.field(default=None, init=False, repr=False)
    _waiting: Optional[list[Deferred[Optional[str]]]] = attrs.field(default=None, init=False, repr=False)

    log = Logger()

    def token(self, api: "VaultAPI") -> Deferred[Optional[str]]:
        """
        :return: ``Deferred`` firing with a client token, logging in first
            if there is none or it is about to expire.
        """
        now = self._clock.seconds()
        if self._token is not None and (self._refresh_at is None or now < self._refresh_at):
            return defer.succeed(self._token)
        waiter: Deferred[Optional[str]] = Deferred()
        if self._waiting is None:
            self._waiting = [waiter]
            self._login(api).addBoth(self._logged_in)
        else:
            self._waiting.append(waiter)
        return waiter

    def forget(self, token: Optional[str]) -> bool:
        """
        Drop ``token`` (Vault refused it: revoked, or expired early) so that
        the next :meth:`token` logs in again.

        :return: ``True``: a new login may help.
        """
        if token is not None and token == self._token:
            self._token = None
        return True

    def _logged_in(self, result: Union[Optional[str], Failure]) -> None:
        waiting, self._waiting = self._waiting or [], None
        for waiter in waiting:
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)

    @inlineCallbacks
    def _login(self, api: "VaultAPI") -> Any:
        url = api.url(self._login_path())
        try:
            with open(self._jwt_path, encoding="utf-8") as f:
                jwt = f.read().strip()
        except (OSError, UnicodeDecodeError) as e:
            raise VaultAuthError(url, f"cannot read the service account JWT {self._jwt_path}: {e}") from None
        status, body = yield api.send("POST", self._login_path(), {"role": self._role, "jwt": jwt}, token=None)
        if status != 200:
            raise VaultAuthError(url, "login refused: " + _reason(status, body))
        auth = body.get("auth") if isinstance(body, dict) else None
        token = auth.get("client_token") if isinstance(auth, dict) else None
        lease = auth.get("lease_duration", 0) if isinstance(auth, dict) else 0
        if not isinstance(token, str) or not token or isinstance(lease, bool) or not isinstance(lease, (int, float)):
            raise VaultResponseError(url, "login answer has no auth.client_token / auth.lease_duration", status)
        now = self._clock.seconds()
        self._token = token
        # A lease of 0 never expires (e.g. a role with no TTL and a root
        # policy); otherwise refresh a little before the end.
        self._refresh_at = None if lease <= 0 else now + lease - min(REFRESH_MARGIN, lease * REFRESH_FRACTION)
        self.logins += 1
        self.log.info(
            "logged in to Vault at {url} as role {role}; token lease {lease} s",
            url=url,
            role=self._role,
            lease=lease,
        )
        return token

    def _login_path(self) -> str:
        return "/v1/auth/" + quote(self._auth_path.strip("/"), safe="/") + "/login"


# -- TLS ------------------------------------------------------------------


@implementer(IPolicyForHTTPS)
@attrs.frozen
class VaultTLSPolicy:
    """
    How to check Vault's certificate: against ``server_name`` (Kong's
    ``tls_server_name``, default the host connected to) and ``trust_root``
    (``None``: the system's store, which honours ``SSL_CERT_FILE``), or not
    at all when ``verify`` is false.
    """

    verify: bool = True
    server_name: Optional[str] = None
    trust_root: Any = None

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        """The connection creator for one connection to ``hostname``."""
        return client_tls(self.server_name or hostname.decode("ascii"), self.verify, self.trust_root)


def make_vault_client(
    reactor: Any,
    *,
    tls_verify: bool = True,
    tls_server_name: Optional[str] = None,
    ca_bundle: Optional[str] = None,
    connect_timeout: float = 30.0,
    pool: Optional[HTTPConnectionPool] = None,
) -> HTTPClient:
    """
    A treq ``HTTPClient`` for Vault with :class:`VaultTLSPolicy`.

    :param ca_bundle: PEM file of CAs to trust instead of the system store
        (a kongacme extension; Kong has no such field).
    :param pool: connection pool; default a persistent one whose idle
        connections close after :data:`POOL_IDLE_SECONDS`.
    :raises kongacme.errors.CertificateError: if ``ca_bundle`` is unusable.
    """
    trust_root = load_trust_root(ca_bundle) if ca_bundle is not None else None
    if pool is None:
        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.cachedConnectionTimeout = POOL_IDLE_SECONDS
    policy = VaultTLSPolicy(verify=tls_verify, server_name=tls_server_name, trust_root=trust_root)
    return HTTPClient(Agent(reactor, contextFactory=policy, connectTimeout=connect_timeout, pool=pool))


# -- requests -------------------------------------------------------------


def _transport_reason(failure: Failure, timeout: float) -> str:
    """Words for a failed request, naming our own timeout as such."""
    nested = getattr(failure.value, "reasons", None) or []
    reasons = [failure] + [r for r in nested if isinstance(r, Failure)]
    if any(r.check(defer.TimeoutError, defer.CancelledError) for r in reasons):
        return f"no answer within the timeout ({timeout * 1000:g} ms)"
    return describe_failure(failure)


@attrs.define
class VaultAPI:
    """
    JSON requests to one Vault server.

    :ivar _client: the treq ``HTTPClient`` (see :func:`make_vault_client`).
    :ivar _reactor: schedules each request's timeout.
    :ivar base_url: ``http(s)://host:port``.
    :ivar _auth: :class:`TokenAuth` or :class:`KubernetesAuth`.
    :ivar timeout: seconds for each request, answer body included.
    """

    _client: HTTPClient
    _reactor: IReactorTime
    base_url: str
    _auth: Union[TokenAuth, KubernetesAuth]
    timeout: float = 2.0

    log = Logger()

    @property
    def auth(self) -> Union[TokenAuth, KubernetesAuth]:
        """The authentication in use."""
        return self._auth

    def url(self, path: str) -> str:
        """The full URL of ``path`` (which starts with ``/v1/``)."""
        return self.base_url + path

    @inlineCallbacks
    def request(self, method: str, path: str, payload: Any = None) -> Any:
        """
        An authenticated request. A 403 makes Kubernetes auth log in once
        more and retry (Vault refused the token: revoked or expired early).

        :param path: absolute path, already percent-encoded, may carry a
            query.
        :return: ``Deferred`` firing with ``(status, body)`` for 2xx, 400 and
            404 answers; ``body`` is the decoded JSON or ``None``.
        :raises VaultUnavailable: transport failures, timeouts, 5xx, 429.
        :raises VaultAuthError: 401/403.
        :raises VaultResponseError: other statuses, 404 for a path no
            secrets engine serves, a body that is not JSON.
        """
        token = yield self._auth.token(self)
        status, body = yield self.send(method, path, payload, token)
        if status == 403 and self._auth.forget(token):
            self.log.warn("Vault refused the token at {url}; logging in again", url=self.url(path.split("?", 1)[0]))
            token = yield self._auth.token(self)
            status, body = yield self.send(method, path, payload, token)
        url = self.url(path.split("?", 1)[0])
        if status in (401, 403):
            raise VaultAuthError(url, _reason(status, body))
        if status == 404 and "no handler for route" in _errors(body):
            raise VaultResponseError(url, "no secrets engine at this path (check kv_path): " + _errors(body), status)
        if not (200 <= status < 300 or status in (400, 404)):
            raise VaultResponseError(url, _reason(status, body), status)
        return (status, body)

    def send(self, method: str, path: str, payload: Any, token: Optional[str]) -> Deferred[tuple[int, Any]]:
        """
        One request, no retry: ``Deferred`` firing with ``(status, body)``
        for any status below 500 except 429.

        :raises VaultUnavailable: see :meth:`request`.
        :raises VaultResponseError: a body that is not JSON.
        """
        url = self.url(path)
        headers = {"Accept": ["application/json"]}
        if token is not None:
            headers["X-Vault-Token"] = [token]
        data = None
        if payload is not None:
            data = json.dumps(payload, separators=(",", ":")).encode("ascii")
            headers["Content-Type"] = ["application/json"]
        d = self._client.request(method, url, headers=headers, data=data, allow_redirects=False)
        d.addCallback(lambda response: read_body(response).addCallback(lambda body: (response.code, body)))
        d.addTimeout(self.timeout, self._reactor)
        bare = url.split("?", 1)[0]

        def failed(failure: Failure) -> Failure:
            if failure.check(VaultError):
                return failure
            raise VaultUnavailable(bare, _transport_reason(failure, self.timeout))

        def answered(result: tuple[int, bytes]) -> tuple[int, Any]:
            status, raw = result
            try:
                body = json.loads(raw) if raw.strip() else None
            except ValueError:
                body = None
                if 200 <= status < 300:
                    raise VaultResponseError(bare, f"HTTP {status} with a body that is not JSON", status) from None
            if status >= 500 or status == 429:
                raise VaultUnavailable(bare, _reason(status, body))
            return (status, body)

        return d.addCallbacks(answered, failed)
