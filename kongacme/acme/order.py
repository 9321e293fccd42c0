"""
Issuance: one order for one certificate (a host name, or a wildcard and
its base name), each authorization answered with the first challenge type
of the configured preference the CA offers (RFC 8555 §7.4, §7.5, §8),
finalized with a CSR, chain downloaded (and an alternate chain picked when
asked to, §7.4.2).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import attrs
import josepy as jose
from acme import messages
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from kongacme.acme.challenges import Http01Solver, choose
from kongacme.acme.client import AcmeClient, log_problem
from kongacme.acme.csr import check_host, make_csr, top_issuer_cn
from kongacme.acme.keys import generate_private_key, generate_private_key_in_thread, private_key_pem
from kongacme.acme.polling import DEFAULT_SCHEDULE, PollSchedule, poll
from kongacme.acme.response import ERROR_PREFIX, AcmeResponse, problem_from_json
from kongacme.acme.transport import PEM_CHAIN_CONTENT_TYPE
from kongacme.errors import AcmeError, AcmeProblem, AcmeTransportError, CertificateError
from kongacme.interfaces import IChallengeSolver, IChallengeTokenStore, IIssuer
from kongacme.tls.certs import CertifiedKey, PrivateKey, load_certified_key

_log = Logger()

ORDER_NOT_READY = ERROR_PREFIX + "orderNotReady"
ALREADY_REPLACED = ERROR_PREFIX + "alreadyReplaced"


class NewOrder(messages.NewOrder):
    """
    newOrder with ARI's ``replaces`` (RFC 9773 §5): the ARI identifier of
    the certificate this order renews. The ``acme`` library's NewOrder has
    no such field yet.
    """

    replaces: Optional[str] = jose.field("replaces", omitempty=True)


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
    solvers: Sequence[Any]
    preferred_chain: Optional[str]
    clock: IReactorTime
    schedule: PollSchedule
    replaces: Optional[str] = None
    #: Every name of the certificate (``host`` first).
    identifiers: Sequence[str] = ()
    #: ``(solver, handle)`` of challenges answered and not yet cleaned up.
    answered: list[tuple[Any, Any]] = attrs.Factory(list)
    #: Clean-ups started while the order goes on (awaited by :meth:`finish`).
    cleaning: list[Deferred[None]] = attrs.Factory(list)

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

    async def _new_order(self) -> AcmeResponse:
        identifiers = [messages.Identifier(typ=messages.IDENTIFIER_FQDN, value=name) for name in self.identifiers]
        url = self.client.directory["newOrder"]
        if self.replaces is not None:
            try:
                return await self.client.transport.post(url, NewOrder(identifiers=identifiers, replaces=self.replaces))
            except AcmeProblem as problem:
                # RFC 9773 §5: the CA refuses a second order replacing the
                # same certificate; a plain order still renews it.
                if problem.type != ALREADY_REPLACED:
                    raise
                self._step("replaces refused", detail=problem.detail)
        return await self.client.transport.post(url, NewOrder(identifiers=identifiers))

    async def run(self) -> CertifiedKey:
        response = await self._new_order()
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
            mark = len(self.answered)
            try:
                await self._solve(authz_url, authz)
                authz, _ = await self._poll(
                    authz_url,
                    lambda s: s not in ("pending", "processing"),
                    "authorization of %s" % (self.host,),
                    wait_first=True,
                )
            finally:
                # Validated or failed: what was published for it goes now,
                # not after the whole order, and without holding the order
                # up (a DNS deletion is a round trip to the server).
                self.cleaning.append(Deferred.fromCoroutine(self.cleanup(mark)))
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
        offered = [c for c in authz.get("challenges") or () if isinstance(c, dict)]
        identifier = authz.get("identifier")
        value = identifier.get("value") if isinstance(identifier, dict) else None
        if not isinstance(value, str):
            raise AcmeTransportError(authz_url, "authorization without an identifier value")
        chosen = choose(offered, self.solvers)
        if chosen is None:
            names = ", ".join(sorted(str(c.get("type")) for c in offered))
            wanted = ", ".join(solver.typ for solver in self.solvers)
            raise OrderFailed(
                self.host,
                "the CA offers no challenge kongacme may answer for %s%s (offered: %s; issuance.challenge_types: %s)"
                % ("*." if authz.get("wildcard") else "", value, names or "none", wanted),
            )
        solver, offer = chosen
        # Only the challenge we answer is parsed: a CA may list others this
        # library does not know, or does not like.
        try:
            challb = messages.ChallengeBody.from_json(offer)
        except Exception as e:
            raise AcmeTransportError(authz_url, "malformed %s challenge: %s" % (solver.typ, e)) from None
        if challb.status != messages.STATUS_PENDING:
            # Already answered (e.g. by an earlier attempt): just wait.
            return
        # §7.1.3: a wildcard authorization's identifier is the base name.
        handle = await solver.present(value, challb.chall, self.client.account_key)
        self.answered.append((solver, handle))
        self._step("answering " + solver.typ, challenge_url=challb.uri, identifier=value)
        # §7.5.1: the client says it is ready by POSTing an empty object.
        response = await self.client.transport.post(challb.uri, b"{}")
        challenge = response.json()
        if _status(challenge) == "invalid":
            raise _error_of(challenge) or OrderFailed(self.host, "%s challenge is invalid" % (solver.typ,))

    async def _finalize(self, order: dict[str, Any], order_url: str) -> dict[str, Any]:
        finalize_url = order.get("finalize")
        if not isinstance(finalize_url, str):
            raise AcmeTransportError(order_url, "order without a finalize URL")
        csr = messages.CertificateRequest(csr=make_csr(self.identifiers, self.private_key))
        try:
            response = await self.client.transport.post(finalize_url, csr)
        except AcmeProblem as problem:
            # The CA may not have noticed yet that the authorizations are
            # valid (§7.4: "orderNotReady"): wait for "ready", then again.
            if problem.type != ORDER_NOT_READY:
                raise
            self._step("not ready, waiting", order_url=order_url)
            order, _ = await self._poll(
                order_url, lambda s: s != "pending", "order of %s to be ready" % (self.host,), False
            )
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

    async def finish(self) -> None:
        """Take back whatever is still published, and wait for the clean-ups started earlier."""
        await self.cleanup()
        for cleaning in self.cleaning:
            await cleaning

    async def cleanup(self, mark: int = 0) -> None:
        """Take back what was published for challenges since ``answered[mark]``; never fails."""
        answered, self.answered[mark:] = self.answered[mark:], []
        for solver, handle in answered:
            try:
                await solver.cleanup(handle)
            except Exception as e:
                _log.warn("could not clean up the {typ} challenge {handle}: {error}", typ=solver.typ,
                          handle=handle, error=str(e))


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
        await order.finish()
    _log.info(
        "certificate issued for {host} in {elapsed_ms:.0f} ms, valid until {not_after}",
        host=order.host,
        elapsed_ms=(order.clock.seconds() - start) * 1000,
        not_after=certified.not_after.isoformat(),
        log_unlimited=True,  # one per order: never rate-limited (kongacme.logs)
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
    replaces: Optional[str] = None,
    solvers: Optional[Sequence[Any]] = None,
    also: Sequence[str] = (),
) -> Deferred[CertifiedKey]:
    """
    Obtain a certificate for ``host`` (and the names in ``also``).

    newOrder with one dns identifier per name; for each authorization that
    is not already valid, answer the first challenge of ``solvers`` the CA
    offers (http-01 by default: ``token -> key authorization`` in
    ``token_store``, read by the port-80 resource), tell the CA, poll until
    it is valid, and take the answer back; finalize with a CSR for
    ``private_key``; poll the order; download the chain (an alternate one
    whose top issuer CN is ``preferred_chain`` if there is one).

    :param client: a registered :class:`~kongacme.acme.client.AcmeClient`.
    :param host: the DNS name (see :func:`check_host`).
    :param private_key: the certificate's key (a new one, or the old one on
        renewal); see :func:`~kongacme.acme.keys.generate_private_key`.
    :param token_store: provides
        :class:`~kongacme.interfaces.IChallengeTokenStore`.
    :param preferred_chain: issuer CN of the wanted chain's top, or ``None``.
    :param clock: provides ``IReactorTime``; default the client's.
    :param schedule: the polling schedule without ``Retry-After``.
    :param replaces: the ARI identifier of the certificate this order
        renews (RFC 9773 §5), or ``None``.
    :param solvers: providers of
        :class:`~kongacme.interfaces.IChallengeSolver`, in order of
        preference; default an http-01 solver over ``token_store``.
    :param also: more names for the certificate (a wildcard's base name).
    :return: ``Deferred`` firing with the
        :class:`~kongacme.tls.certs.CertifiedKey` (source ``acme:<host>``),
        or failing with :class:`~kongacme.errors.AcmeProblem` (the CA's
        problem, e.g. ``rejectedIdentifier`` or a challenge's
        ``connection`` / ``unauthorized``),
        :class:`~kongacme.errors.AcmeTransportError`, :class:`OrderFailed`
        or :class:`~kongacme.acme.polling.PollTimeout`.
    :raises ValueError: at once for an IP address or invalid host name,
        or a wildcard without a dns-01 solver.
    """
    if solvers is None:
        if not IChallengeTokenStore.providedBy(token_store):
            raise TypeError("token_store must provide IChallengeTokenStore")
        solvers = [Http01Solver(token_store)]
    if not solvers or not all(IChallengeSolver.providedBy(s) for s in solvers):
        raise TypeError("solvers must be a non-empty list of IChallengeSolver providers")
    wildcard_ok = any(s.typ == "dns-01" for s in solvers)
    names = [check_host(host, wildcard=wildcard_ok)]
    names += [n for n in (check_host(a, wildcard=wildcard_ok) for a in also) if n not in names]
    order = _Order(
        client=client,
        host=names[0],
        identifiers=tuple(names),
        private_key=private_key,
        solvers=tuple(solvers),
        preferred_chain=preferred_chain,
        clock=clock if clock is not None else client.clock,
        schedule=schedule,
        replaces=replaces,
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
    :ivar _reactor: provides ``IReactorThreads``: new RSA keys are made in
        its thread pool so the reactor keeps serving meanwhile; ``None``
        makes them in the calling thread.
    """

    _client: AcmeClient
    _token_store: IChallengeTokenStore
    _cert_type: str = "rsa"
    _rsa_key_size: int = 4096
    _preferred_chain: Optional[str] = None
    _schedule: PollSchedule = DEFAULT_SCHEDULE
    _reactor: Any = None
    #: Challenge solvers in order of preference (``None``: http-01 only).
    _solvers: Optional[Sequence[Any]] = None

    def issue(
        self, host: str, private_key: Optional[PrivateKey] = None, replaces: Optional[str] = None,
        also: Sequence[str] = (),
    ) -> Deferred[CertifiedKey]:
        """
        See :meth:`kongacme.interfaces.IIssuer.issue`; a new key is made
        per the settings when ``private_key`` is ``None``; ``also``: more
        names for the certificate.
        """
        check_host(host, wildcard=any(s.typ == "dns-01" for s in self._solvers or ()))
        if private_key is not None:
            key: Deferred[PrivateKey] = succeed(private_key)
        elif self._reactor is not None:
            key = generate_private_key_in_thread(self._reactor, self._cert_type, self._rsa_key_size)
        else:
            key = maybeDeferred(generate_private_key, self._cert_type, self._rsa_key_size)
        return key.addCallback(
            lambda key: issue(
                self._client,
                host,
                key,
                self._token_store,
                self._preferred_chain,
                schedule=self._schedule,
                replaces=replaces,
                solvers=self._solvers,
                also=also,
            )
        )
