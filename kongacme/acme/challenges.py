"""
Answering challenges (RFC 8555 §8): one solver per type behind
:class:`~kongacme.interfaces.IChallengeSolver`, and the choice of the
challenge to answer among those the CA offers for an authorization.
"""

from __future__ import annotations

import re
from typing import Any, Optional, Sequence

import attrs
import josepy as jose
from acme import challenges
from cryptography.hazmat.primitives import hashes
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from zope.interface import implementer

from kongacme.errors import AcmeTransportError, DNSError
from kongacme.interfaces import IChallengeSolver, IChallengeTokenStore, IDNSRecords

_log = Logger()

#: Seconds a stored key authorization lives (Kong's ``<token>#http-01`` TTL).
TOKEN_TTL = 3600

#: Every challenge type kongacme knows the name of, in the order
#: ``issuance.challenge_types`` lists them by default.
KNOWN_TYPES = ("http-01", "tls-alpn-01", "dns-01")

#: RFC 8737's challenge type (the ``acme`` library has no class for it).
TLS_ALPN01 = "tls-alpn-01"


def choose(offered: Sequence[dict[str, Any]], solvers: Sequence[Any]) -> Optional[tuple[Any, dict[str, Any]]]:
    """
    The first of ``solvers`` (in order of preference) whose type the CA
    offers, with the offered challenge object, or ``None``.

    :param offered: the authorization's ``challenges`` (JSON objects).
    :param solvers: providers of :class:`IChallengeSolver`.
    """
    for solver in solvers:
        for challenge in offered:
            if challenge.get("type") == solver.typ:
                return solver, challenge
    return None


@implementer(IChallengeSolver)
@attrs.define
class Http01Solver:
    """
    http-01 (§8.3): the key authorization goes to the token store, which
    the port-80 resource (of every node sharing the store) serves.
    """

    _token_store: IChallengeTokenStore
    typ: str = attrs.field(default=challenges.HTTP01.typ, init=False)

    def present(self, identifier: str, challenge: Any, account_key: Any) -> Deferred[str]:
        token = challenge.encode("token")
        key_authorization = challenge.key_authorization(account_key)
        return self._token_store.put(token, key_authorization, ttl=TOKEN_TTL).addCallback(lambda _: token)

    def cleanup(self, handle: str) -> Deferred[None]:
        return self._token_store.remove(handle)


_TOKEN = re.compile(r"[A-Za-z0-9_-]{22,}\Z")


def key_authorization_of(challenge: Any, account_key: Any) -> str:
    """
    ``<token>.<base64url SHA-256 JWK thumbprint>`` (RFC 8555 §8.1) of a
    challenge the ``acme`` library has no class for (it parses it as an
    ``UnrecognizedChallenge`` holding the JSON object).

    :raises AcmeTransportError: when the token is missing or not base64url
        of at least 128 bits (§8.3, RFC 8737 §3).
    """
    jobj = getattr(challenge, "jobj", None)
    jobj = jobj if isinstance(jobj, dict) else {}
    token = jobj.get("token")
    if not isinstance(token, str) or not _TOKEN.match(token):
        raise AcmeTransportError(
            str(jobj.get("url", "?")), "challenge token %r is not base64url of at least 128 bits" % (str(token)[:64],)
        )
    return token + "." + jose.b64encode(account_key.thumbprint(hash_function=hashes.SHA256)).decode("ascii")


@implementer(IChallengeSolver)
@attrs.define
class TlsAlpn01Solver:
    """
    tls-alpn-01 (RFC 8737): the key authorization goes to a store keyed by
    identifier (this process's memory and the shared storage), which the
    TLS listener of every node sharing the storage reads when the CA
    connects with ``acme-tls/1`` (:mod:`kongacme.tls.alpn_challenge`).
    """

    _store: IChallengeTokenStore
    typ: str = attrs.field(default=TLS_ALPN01, init=False)

    def present(self, identifier: str, challenge: Any, account_key: Any) -> Deferred[str]:
        try:
            key_authorization = key_authorization_of(challenge, account_key)
        except AcmeTransportError:
            return fail()
        return self._store.put(identifier, key_authorization, ttl=TOKEN_TTL).addCallback(lambda _: identifier)

    def cleanup(self, handle: str) -> Deferred[None]:
        return self._store.remove(handle)


@implementer(IChallengeSolver)
@attrs.define
class Dns01Solver:
    """
    dns-01 (§8.4): a TXT record ``_acme-challenge.<identifier>`` holding
    the base64url SHA-256 of the key authorization, written through an
    :class:`IDNSRecords` provider; :meth:`present` returns only once the
    provider's server answers it, so the CA is not told too early.

    :ivar _records: the DNS provider.
    :ivar _clock: for the visibility polls.
    :ivar _propagation_timeout: seconds to wait for the record to be
        visible before giving up (and deleting it).
    :ivar _ttl: the record's TTL.
    :ivar _poll_interval: seconds between visibility checks.
    """

    _records: IDNSRecords
    _clock: IReactorTime
    _propagation_timeout: float = 60.0
    _ttl: int = 60
    _poll_interval: float = 0.5
    typ: str = attrs.field(default=challenges.DNS01.typ, init=False)

    def present(self, identifier: str, challenge: Any, account_key: Any) -> Deferred[tuple[str, str]]:
        return Deferred.fromCoroutine(self._present(identifier, challenge, account_key))

    async def _present(self, identifier: str, challenge: Any, account_key: Any) -> tuple[str, str]:
        name = challenge.validation_domain_name(identifier)
        value = challenge.validation(account_key)
        await self._records.add_txt(name, value, self._ttl)
        handle = (name, value)
        try:
            await self._wait_visible(name, value)
        except BaseException:
            await self._remove_quietly(handle)
            raise
        return handle

    async def _wait_visible(self, name: str, value: str) -> None:
        deadline = self._clock.seconds() + self._propagation_timeout
        while not await self._records.txt_visible(name, value):
            if self._clock.seconds() >= deadline:
                raise DNSError(
                    getattr(self._records, "server", "?"),
                    "TXT record %s not visible after %g s (issuance.dns01.propagation_timeout)"
                    % (name, self._propagation_timeout),
                )
            await deferLater(self._clock, self._poll_interval, lambda: None)

    async def _remove_quietly(self, handle: tuple[str, str]) -> None:
        try:
            await self.cleanup(handle)
        except Exception as e:
            _log.warn("could not delete TXT record {name}: {error}", name=handle[0], error=str(e))

    def cleanup(self, handle: tuple[str, str]) -> Deferred[None]:
        name, value = handle
        return self._records.remove_txt(name, value)

    def close(self) -> Deferred[None]:
        """Close the DNS provider (at shutdown)."""
        return self._records.close()
