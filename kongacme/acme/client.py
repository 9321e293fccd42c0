"""
An ACME client for one CA directory and one account key: the directory
(RFC 8555 §7.1.1) and the account (§7.3). Orders live in
:mod:`kongacme.acme.order`.
"""

from __future__ import annotations

from typing import Any, Optional

import attrs
import josepy as jose
from acme import messages
from cryptography import x509
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from kongacme.acme.eab import (
    ZEROSSL_EAB_URL,
    ExternalAccountRequired,
    eab_binding,
    fetch_zerossl_eab,
    is_zerossl,
)
from kongacme.acme.response import ERROR_PREFIX, AcmeResponse
from kongacme.acme.transport import DEFAULT_BAD_NONCE_RETRIES, DEFAULT_TIMEOUT, AcmeTransport
from kongacme.errors import AcmeError, AcmeProblem, AcmeTransportError

_log = Logger()

ACCOUNT_DOES_NOT_EXIST = ERROR_PREFIX + "accountDoesNotExist"
ALREADY_REVOKED = ERROR_PREFIX + "alreadyRevoked"
#: RFC 5280 §5.3.1 CRLReason codes an ACME client may send (7 is unused).
REVOCATION_REASONS = frozenset({0, 1, 2, 3, 4, 5, 6, 8, 9, 10})


class TermsOfServiceNotAccepted(AcmeError):
    """
    The CA has terms of service and the configuration does not accept them.

    :ivar url: the terms of service.
    """

    def __init__(self, url: str):
        self.url = url
        super().__init__("the CA's terms of service (%s) must be accepted: set acme.tos_accepted: true" % (url,))


def log_problem(problem: AcmeProblem, message: str, **fields: Any) -> None:
    """
    Log a CA problem at warn with its type, detail and status as fields.

    :param message: what failed, a format string over ``fields``.
    """
    _log.warn(
        message + ": {problem_type}: {detail} (HTTP {status})",
        problem_type=problem.type,
        detail=problem.detail,
        status=problem.status,
        problem=problem.to_dict(),
        **fields,
    )


@attrs.define
class AcmeClient:
    """
    Talks to one CA as one account.

    Build it with :meth:`from_directory`, then :meth:`register` before
    ordering.

    :ivar directory_url: where the directory was read.
    :ivar directory: the parsed directory.
    :ivar account_url: the account's URL once registered, else ``None``.
    """

    directory_url: str
    directory: messages.Directory = attrs.field(repr=False)
    _transport: AcmeTransport = attrs.field(repr=False)
    account_url: Optional[str] = None

    @classmethod
    def from_directory(
        cls,
        url: str,
        http_client: Any,
        clock: IReactorTime,
        account_key: jose.JWK,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        bad_nonce_retries: int = DEFAULT_BAD_NONCE_RETRIES,
    ) -> Deferred["AcmeClient"]:
        """
        Read the CA's directory (§7.1.1) and make a client for it.

        :param url: the directory URL (``acme.api_uri``).
        :param http_client: a treq ``HTTPClient`` (see
            :func:`kongacme.acme.trust.make_http_client`) or
            :class:`treq.testing.StubTreq`.
        :param clock: provides ``IReactorTime``; times requests and polls.
        :param account_key: the account's private key.
        :param timeout: seconds per request.
        :param bad_nonce_retries: resends after ``badNonce``.
        :return: ``Deferred`` firing with the client, or failing with
            :class:`~kongacme.errors.AcmeError` (e.g. a transport error, or
            an answer that is not a directory).
        """
        transport = AcmeTransport(http_client, clock, account_key, timeout=timeout, bad_nonce_retries=bad_nonce_retries)

        async def load() -> AcmeClient:
            response = await transport.get(url)
            directory = _parse_directory(response)
            transport.new_nonce_url = directory["newNonce"]
            return cls(directory_url=url, directory=directory, transport=transport)

        return Deferred.fromCoroutine(load())

    @property
    def transport(self) -> AcmeTransport:
        """What signs and sends this client's requests."""
        return self._transport

    @property
    def account_key(self) -> jose.JWK:
        """The account's private key."""
        return self._transport.key

    @property
    def clock(self) -> IReactorTime:
        """The injected clock."""
        return self._transport.clock

    @property
    def terms_of_service(self) -> Optional[str]:
        """The directory's ``meta.termsOfService`` URL, or ``None``."""
        return self.directory.meta.terms_of_service

    @property
    def external_account_required(self) -> bool:
        """Whether the directory's ``meta.externalAccountRequired`` is true."""
        return bool(self.directory.meta.external_account_required)

    @property
    def renewal_info_url(self) -> Optional[str]:
        """The directory's ``renewalInfo`` (ACME ARI, RFC 9773), or ``None``."""
        try:
            value = self.directory["renewalInfo"]
        except KeyError:
            return None
        return value if isinstance(value, str) else None

    def find_account(self) -> Deferred[Optional[str]]:
        """
        Look up the account for our key without creating one
        (``onlyReturnExisting``, §7.3.1); remember its URL if found.

        :return: ``Deferred`` firing with the account URL or ``None``.
        """
        return Deferred.fromCoroutine(self._find_account())

    async def _find_account(self) -> Optional[str]:
        try:
            response = await self._transport.post(
                self.directory["newAccount"],
                messages.NewRegistration(only_return_existing=True),
                jwk=True,
            )
        except AcmeProblem as problem:
            if problem.type == ACCOUNT_DOES_NOT_EXIST:
                return None
            raise
        return self._account_from(response)

    def register(
        self,
        email: Optional[str],
        tos_accepted: bool,
        eab: Optional[tuple[str, str]] = None,
        *,
        zerossl_eab_url: str = ZEROSSL_EAB_URL,
    ) -> Deferred[str]:
        """
        Find the account for our key, or create one (§7.3).

        When the directory has terms of service they must be accepted
        (Kong only insists for Let's Encrypt). When the CA requires external
        account binding (§7.3.4), ``eab`` is used; without it, credentials
        are fetched from ZeroSSL's API for a ZeroSSL directory, and any
        other CA is an error.

        :param email: contact address (sent as ``mailto:``), or ``None``.
        :param tos_accepted: ``acme.tos_accepted``.
        :param eab: ``(eab_kid, eab_hmac_key)`` or ``None``.
        :param zerossl_eab_url: ZeroSSL's credentials endpoint.
        :return: ``Deferred`` firing with the account URL (also kept in
            :attr:`account_url` and used to sign later requests), or
            failing with :class:`TermsOfServiceNotAccepted`,
            :class:`~kongacme.acme.eab.ExternalAccountRequired`,
            :class:`~kongacme.errors.AcmeProblem` …
        """
        return Deferred.fromCoroutine(self._register(email, tos_accepted, eab, zerossl_eab_url))

    async def _register(
        self,
        email: Optional[str],
        tos_accepted: bool,
        eab: Optional[tuple[str, str]],
        zerossl_eab_url: str,
    ) -> str:
        if self.terms_of_service and not tos_accepted:
            raise TermsOfServiceNotAccepted(self.terms_of_service)
        try:
            existing = await self._find_account()
            if existing is not None:
                _log.info("using existing ACME account {account_url}", account_url=existing)
                return existing
            binding = None
            if self.external_account_required:
                if eab is None:
                    if not is_zerossl(self.directory_url):
                        raise ExternalAccountRequired(self.directory_url)
                    if not email:
                        raise ExternalAccountRequired(
                            self.directory_url, "ZeroSSL needs acme.account_email to issue them"
                        )
                    eab = await fetch_zerossl_eab(self._transport, email, zerossl_eab_url)
                binding = eab_binding(self.account_key, eab[0], eab[1], self.directory)
            kwargs: dict[str, Any] = {"contact": ("mailto:" + email,) if email else ()}
            if tos_accepted:
                kwargs["terms_of_service_agreed"] = True
            if binding is not None:
                kwargs["external_account_binding"] = binding
            response = await self._transport.post(
                self.directory["newAccount"], messages.NewRegistration(**kwargs), jwk=True
            )
        except AcmeProblem as problem:
            log_problem(
                problem, "ACME account registration at {directory_url} failed", directory_url=self.directory_url
            )
            raise
        account_url = self._account_from(response)
        _log.info("created ACME account {account_url}", account_url=account_url)
        return account_url

    def revoke(self, certificate: x509.Certificate, reason: int = 0) -> Deferred[None]:
        """
        Revoke ``certificate`` (RFC 8555 §7.6): a ``revokeCert`` request
        signed with the account key (the account that ordered it, or one
        that holds authorizations for all its names).

        :param certificate: the end-entity certificate.
        :param reason: an RFC 5280 CRLReason code (0 unspecified, 1
            keyCompromise, 4 superseded, 5 cessationOfOperation …).
        :return: ``Deferred`` firing with ``None`` once the CA confirmed
            (200), or failing with :class:`~kongacme.errors.AcmeProblem`
            (e.g. ``alreadyRevoked``, ``unauthorized``, ``badRevocationReason``)
            or :class:`~kongacme.errors.AcmeTransportError`.
        :raises ValueError: for a reason code RFC 5280 does not define.
        """
        if isinstance(reason, bool) or reason not in REVOCATION_REASONS:
            raise ValueError("revocation reason must be one of %s, not %r" % (sorted(REVOCATION_REASONS), reason))
        return Deferred.fromCoroutine(self._revoke(certificate, reason))

    async def _revoke(self, certificate: x509.Certificate, reason: int) -> None:
        try:
            url = self.directory["revokeCert"]
        except KeyError:
            url = None
        if not isinstance(url, str) or not url:
            raise AcmeTransportError(self.directory_url, "the directory has no revokeCert URL")
        try:
            await self._transport.post(url, messages.Revocation(certificate=certificate, reason=reason))
        except AcmeProblem as problem:
            log_problem(problem, "revoking certificate {serial} failed", serial="%x" % (certificate.serial_number,))
            raise
        _log.info("revoked certificate {serial} (reason {reason})", serial="%x" % (certificate.serial_number,),
                  reason=reason)

    def _account_from(self, response: AcmeResponse) -> str:
        # §7.3: the account URL is the Location of the newAccount answer,
        # both when it was created (201) and when it existed (200).
        account_url = response.location
        if not account_url:
            raise AcmeTransportError(response.url, "account answer without a Location header")
        self.account_url = account_url
        self._transport.kid = account_url
        return account_url


def _parse_directory(response: AcmeResponse) -> messages.Directory:
    jobj = response.json()
    try:
        directory = messages.Directory.from_json(jobj)
    except (jose.DeserializationError, TypeError, ValueError) as e:
        raise AcmeTransportError(response.url, "not an ACME directory: %s" % (e,)) from None
    for name in ("newNonce", "newAccount", "newOrder"):
        try:
            value = directory[name]
        except KeyError:
            value = None
        if not isinstance(value, str) or not value:
            raise AcmeTransportError(response.url, "not an ACME directory: no %s URL" % (name,))
    return directory
