"""
Issuance: one order for one host name, validated with http-01 (RFC 8555
§7.4, §7.5, §8.3), finalized with a CSR, chain downloaded (and an alternate
chain picked when asked to, §7.4.2).
"""

from __future__ import annotations

import ipaddress
from typing import Any, Optional

import attrs
from acme import challenges, messages
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from kongacme.acme.client import AcmeClient, log_problem
from kongacme.acme.keys import generate_private_key, private_key_pem
from kongacme.acme.polling import DEFAULT_SCHEDULE, PollSchedule, poll
from kongacme.acme.transport import ERROR_PREFIX, PEM_CHAIN_CONTENT_TYPE, AcmeResponse, problem_from_json
from kongacme.errors import AcmeError, AcmeProblem, AcmeTransportError, CertificateError
from kongacme.interfaces import IChallengeTokenStore, IIssuer
from kongacme.tls.certs import CertifiedKey, PrivateKey, load_certified_key

_log = Logger()

#: Seconds a stored key authorization lives (Kong's ``<token>#http-01`` TTL).
TOKEN_TTL = 3600
ORDER_NOT_READY = ERROR_PREFIX + "orderNotReady"


class OrderFailed(AcmeError):
    """
    The CA put an order or authorization in a state that cannot lead to a
    certificate, without a problem document saying why.

    :ivar host: the host name ordered.
    :ivar reason: what happened.
    """

    def __init__(self, host: str, reason: str):
        self.host = host
        self.reason = reason
        super().__init__("order for %s: %s" % (host, reason))


def check_host(host: str) -> str:
    """
    The dns identifier to order for ``host``: lower-cased, without a
    trailing dot.

    :raises ValueError: for an IP address (never sent as a dns identifier,
        unlike Kong), a wildcard (http-01 cannot validate one, §8.3) or
        something that is not a host name.
    """
    if not isinstance(host, str):
        raise TypeError("host must be str, not %s" % (type(host).__name__,))
    name = host.strip().lower().rstrip(".")
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        pass
    else:
        raise ValueError("%r is an IP address, not a DNS name" % (host,))
    if name.startswith("*."):
        raise ValueError("%r: wildcard names need dns-01, which is not supported" % (host,))
    labels = name.split(".")
    if not name or len(name) > 253 or any(not label or len(label) > 63 for label in labels):
        raise ValueError("%r is not a valid DNS name" % (host,))
    if any(not (c.isascii() and (c.isalnum() or c in "-_")) for label in labels for c in label):
        raise ValueError("%r is not a valid DNS name (use the A-label form of IDNs)" % (host,))
    return name


def make_csr(host: str, private_key: PrivateKey) -> x509.CertificateSigningRequest:
    """
    A CSR for ``host``: subjectAltName ``host`` and, as Kong sends, CN
    ``host`` (left out above 64 characters, the CN's limit).
    """
    subject = []
    if len(host) <= 64:
        subject.append(x509.NameAttribute(NameOID.COMMON_NAME, host))
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name(subject))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .sign(private_key, hashes.SHA256())
    )


def top_issuer_cn(chain_pem: bytes) -> Optional[str]:
    """
    The issuer CN of the last certificate in a PEM chain (the name
    ``preferred_chain`` is matched against), or ``None``.
    """
    try:
        certificates = x509.load_pem_x509_certificates(chain_pem)
    except ValueError:
        return None
    if not certificates:
        return None
    names = certificates[-1].issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else None


def _status(jobj: dict[str, Any]) -> str:
    status = jobj.get("status")
    return status if isinstance(status, str) else ""


def _error_of(jobj: dict[str, Any]) -> Optional[AcmeProblem]:
    error = jobj.get("error")
    return problem_from_json(error) if isinstance(error, dict) else None


@attrs.define
class _Order:
    """The state of one issuance while it runs."""

    client: AcmeClient
    host: str
    private_key: PrivateKey
    token_store: IChallengeTokenStore
    preferred_chain: Optional[str]
    clock: IReactorTime
    schedule: PollSchedule
    tokens: list[str] = attrs.Factory(list)

    def _step(self, step: str, **fields: Any) -> None:
        _log.debug("order for {host}: {step}", host=self.host, step=step, **fields)

    async def _get(self, url: str) -> tuple[dict[str, Any], AcmeResponse]:
        response = await self.client.transport.post_as_get(url)
        return response.json(), response

    def _poll(self, url: str, done: Any, what: str, wait_first: bool) -> Deferred[tuple[dict[str, Any], AcmeResponse]]:
        now = self.clock.seconds
        return poll(
            self.clock,
            lambda: Deferred.fromCoroutine(self._get(url)),
            lambda result: done(_status(result[0])),
            what=what,
            retry_after=lambda result: result[1].retry_after(now()),
            schedule=self.schedule,
            wait_first=wait_first,
        )

    async def run(self) -> CertifiedKey:
        transport = self.client.transport
        response = await transport.post(
            self.client.directory["newOrder"],
            messages.NewOrder(identifiers=[messages.Identifier(typ=messages.IDENTIFIER_FQDN, value=self.host)]),
        )
        order = response.json()
        order_url = response.location
        if not order_url:
            raise AcmeTransportError(response.url, "newOrder answer without a Location header")
        self._step("created", order_url=order_url, status=_status(order))
        if _status(order) == "invalid":
            raise _error_of(order) or OrderFailed(self.host, "the new order is invalid")
        authorizations = order.get("authorizations")
        if not isinstance(authorizations, list) or not all(isinstance(u, str) for u in authorizations):
            raise AcmeTransportError(order_url, "order without a list of authorization URLs")
        for authz_url in authorizations:
            await self._authorize(authz_url)
        order = await self._finalize(order, order_url)
        return await self._download(order)

    async def _authorize(self, authz_url: str) -> None:
        authz, _ = await self._get(authz_url)
        status = _status(authz)
        # Pebble (50% by default) and real CAs reuse recent valid
        # authorizations for the same account: nothing to do then.
        if status == "valid":
            self._step("authorization already valid", authz_url=authz_url)
            return
        if status == "pending":
            await self._solve(authz_url, authz)
            authz, _ = await self._poll(
                authz_url,
                lambda s: s not in ("pending", "processing"),
                "authorization of %s" % (self.host,),
                wait_first=True,
            )
            status = _status(authz)
        if status == "valid":
            self._step("authorization valid", authz_url=authz_url)
            return
        raise self._authz_problem(authz, status)

    def _authz_problem(self, authz: dict[str, Any], status: str) -> AcmeError:
        # §7.1.4: why an authorization failed is in its challenges' errors.
        for challenge in authz.get("challenges") or ():
            if isinstance(challenge, dict):
                problem = _error_of(challenge)
                if problem is not None:
                    return problem
        return OrderFailed(self.host, "authorization is %s" % (status or "missing a status",))

    async def _solve(self, authz_url: str, authz: dict[str, Any]) -> None:
        try:
            parsed = messages.Authorization.from_json(authz)
        except Exception as e:
            raise AcmeTransportError(authz_url, "malformed authorization: %s" % (e,)) from None
        challb = next((c for c in parsed.challenges if isinstance(c.chall, challenges.HTTP01)), None)
        if challb is None:
            offered = ", ".join(sorted(str(c.get("type")) for c in authz.get("challenges") or () if isinstance(c, dict)))
            raise OrderFailed(self.host, "the CA offers no http-01 challenge (only: %s)" % (offered or "none",))
        if challb.status != messages.STATUS_PENDING:
            # Already answered (e.g. by an earlier attempt): just wait.
            return
        token = challb.chall.encode("token")
        key_authorization = challb.chall.key_authorization(self.client.account_key)
        await self.token_store.put(token, key_authorization, ttl=TOKEN_TTL)
        self.tokens.append(token)
        self._step("answering http-01", challenge_url=challb.uri)
        # §7.5.1: the client says it is ready by POSTing an empty object.
        response = await self.client.transport.post(challb.uri, b"{}")
        challenge = response.json()
        if _status(challenge) == "invalid":
            raise _error_of(challenge) or OrderFailed(self.host, "http-01 challenge is invalid")

    async def _finalize(self, order: dict[str, Any], order_url: str) -> dict[str, Any]:
        finalize_url = order.get("finalize")
        if not isinstance(finalize_url, str):
            raise AcmeTransportError(order_url, "order without a finalize URL")
        csr = messages.CertificateRequest(csr=make_csr(self.host, self.private_key))
        try:
            response = await self.client.transport.post(finalize_url, csr)
        except AcmeProblem as problem:
            # The CA may not have noticed yet that the authorizations are
            # valid (§7.4: "orderNotReady"): wait for "ready", then again.
            if problem.type != ORDER_NOT_READY:
                raise
            self._step("not ready, waiting", order_url=order_url)
            order, _ = await self._poll(order_url, lambda s: s != "pending", "order of %s to be ready" % (self.host,), False)
            if _status(order) != "ready":
                raise self._order_problem(order)
            response = await self.client.transport.post(finalize_url, csr)
        order = response.json()
        self._step("finalized", order_url=order_url, status=_status(order))
        # §7.1.6: ready -> processing -> valid, or invalid from anywhere.
        if _status(order) not in ("valid", "invalid"):
            order, _ = await self._poll(
                order_url,
                lambda s: s in ("valid", "invalid"),
                "certificate for %s" % (self.host,),
                wait_first=True,
            )
        if _status(order) != "valid":
            raise self._order_problem(order)
        return order

    def _order_problem(self, order: dict[str, Any]) -> AcmeError:
        return _error_of(order) or OrderFailed(self.host, "order is %s" % (_status(order) or "missing a status",))

    async def _download(self, order: dict[str, Any]) -> CertifiedKey:
        certificate_url = order.get("certificate")
        if not isinstance(certificate_url, str):
            raise OrderFailed(self.host, "valid order without a certificate URL")
        transport = self.client.transport
        response = await transport.post_as_get(certificate_url, accept=PEM_CHAIN_CONTENT_TYPE)
        chain_pem = response.body
        self._step("downloaded chain", certificate_url=certificate_url)
        wanted = self.preferred_chain
        if wanted and top_issuer_cn(chain_pem) != wanted:
            # §7.4.2: other chains for the same certificate are offered as
            # Link: rel="alternate".
            for alternate_url in response.links("alternate"):
                alternate = await transport.post_as_get(alternate_url, accept=PEM_CHAIN_CONTENT_TYPE)
                if top_issuer_cn(alternate.body) == wanted:
                    self._step("using alternate chain", certificate_url=alternate_url)
                    chain_pem = alternate.body
                    break
            else:
                _log.info(
                    "no chain for {host} is issued by {preferred_chain}; using the default one",
                    host=self.host,
                    preferred_chain=wanted,
                )
        try:
            return load_certified_key(chain_pem, private_key_pem(self.private_key), source="acme:" + self.host)
        except CertificateError as e:
            raise AcmeTransportError(certificate_url, "unusable certificate chain: %s" % (e.reason,)) from None

    async def cleanup(self) -> None:
        for token in self.tokens:
            try:
                await self.token_store.remove(token)
            except Exception as e:
                _log.warn("could not remove challenge token {token}: {error}", token=token, error=e)


async def _issue(order: _Order) -> CertifiedKey:
    start = order.clock.seconds()
    try:
        certified = await order.run()
    except AcmeProblem as problem:
        log_problem(problem, "issuance for {host} failed", host=order.host)
        raise
    except AcmeError as e:
        _log.warn("issuance for {host} failed: {error}", host=order.host, error=str(e))
        raise
    finally:
        await order.cleanup()
    _log.info(
        "certificate issued for {host} in {elapsed_ms:.0f} ms, valid until {not_after}",
        host=order.host,
        elapsed_ms=(order.clock.seconds() - start) * 1000,
        not_after=certified.not_after.isoformat(),
    )
    return certified


def issue(
    client: AcmeClient,
    host: str,
    private_key: PrivateKey,
    token_store: IChallengeTokenStore,
    preferred_chain: Optional[str] = None,
    clock: Optional[IReactorTime] = None,
    *,
    schedule: PollSchedule = DEFAULT_SCHEDULE,
) -> Deferred[CertifiedKey]:
    """
    Obtain a certificate for ``host`` with http-01.

    newOrder with one dns identifier; for each authorization that is not
    already valid, store ``token -> key authorization`` in ``token_store``
    (read by the port-80 resource), tell the CA, and poll until it is
    valid; finalize with a CSR for ``private_key``; poll the order; download
    the chain (an alternate one whose top issuer CN is ``preferred_chain``
    if there is one). The tokens are removed afterwards, whatever happened.

    :param client: a registered :class:`~kongacme.acme.client.AcmeClient`.
    :param host: the DNS name (see :func:`check_host`).
    :param private_key: the certificate's key (a new one, or the old one on
        renewal); see :func:`~kongacme.acme.keys.generate_private_key`.
    :param token_store: provides
        :class:`~kongacme.interfaces.IChallengeTokenStore`.
    :param preferred_chain: issuer CN of the wanted chain's top, or ``None``.
    :param clock: provides ``IReactorTime``; default the client's.
    :param schedule: the polling schedule without ``Retry-After``.
    :return: ``Deferred`` firing with the
        :class:`~kongacme.tls.certs.CertifiedKey` (source ``acme:<host>``),
        or failing with :class:`~kongacme.errors.AcmeProblem` (the CA's
        problem, e.g. ``rejectedIdentifier`` or a challenge's
        ``connection`` / ``unauthorized``),
        :class:`~kongacme.errors.AcmeTransportError`, :class:`OrderFailed`
        or :class:`~kongacme.acme.polling.PollTimeout`.
    :raises ValueError: at once for an IP address or invalid host name.
    """
    name = check_host(host)
    if not IChallengeTokenStore.providedBy(token_store):
        raise TypeError("token_store must provide IChallengeTokenStore")
    order = _Order(
        client=client,
        host=name,
        private_key=private_key,
        token_store=token_store,
        preferred_chain=preferred_chain,
        clock=clock if clock is not None else client.clock,
        schedule=schedule,
    )
    return Deferred.fromCoroutine(_issue(order))


@implementer(IIssuer)
@attrs.define
class AcmeIssuer:
    """
    :class:`~kongacme.interfaces.IIssuer` over :func:`issue`, with Kong's
    ``cert_type`` / ``rsa_key_size`` / ``preferred_chain`` settings.

    :ivar _client: a registered :class:`~kongacme.acme.client.AcmeClient`.
    :ivar _token_store: where key authorizations go.
    """

    _client: AcmeClient
    _token_store: IChallengeTokenStore
    _cert_type: str = "rsa"
    _rsa_key_size: int = 4096
    _preferred_chain: Optional[str] = None
    _schedule: PollSchedule = DEFAULT_SCHEDULE

    def issue(self, host: str, private_key: Optional[PrivateKey] = None) -> Deferred[CertifiedKey]:
        """
        See :meth:`kongacme.interfaces.IIssuer.issue`; a new key is made
        per the settings when ``private_key`` is ``None``.
        """
        if private_key is None:
            private_key = generate_private_key(self._cert_type, self._rsa_key_size)
        return issue(
            self._client,
            host,
            private_key,
            self._token_store,
            self._preferred_chain,
            schedule=self._schedule,
        )
