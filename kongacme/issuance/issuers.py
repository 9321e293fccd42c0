"""
The primary CA and its fallbacks (``issuance.fallback_issuers``) as one
:class:`IIssuer`: an order the primary fails through its own fault moves on
to the next CA at once; which CA issued each certificate is recorded
(memory and storage) for the Admin API, the status page and metrics, and
for revoking or asking ARI at the right CA.
"""

from __future__ import annotations

import collections
import json
from typing import Any, Callable, Optional

import attrs
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from kongacme.acme.ari import cert_id
from kongacme.errors import AcmeError
from kongacme.interfaces import IChallengeTokenStore, IIssuer, IStorage
from kongacme.issuance.acme_issuer import DaemonAcmeIssuer
from kongacme.issuance.fallback import IssuerHealth, ca_at_fault
from kongacme.issuance.solvers import make_solvers
from kongacme.storage import keys
from kongacme.storage.errors import StorageError

#: Certificates whose issuer is remembered in memory, at most (oldest first out).
MAX_RECORDS = 200_000


@attrs.frozen
class IssuedBy:
    """
    Which CA issued a certificate.

    :ivar directory: the CA's directory URL.
    :ivar fallback: whether it was a fallback CA (not ``acme.api_uri``)
        when the certificate was issued.
    """

    directory: str
    fallback: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-able, as the Admin API shows it."""
        return {"directory": self.directory, "fallback": self.fallback}


class IssuerLedger:
    """
    What outlives a reload of the issuer chain: which CA issued each
    certificate (by fingerprint, in memory, and by host in storage under
    :func:`kongacme.storage.keys.issued_by`), each CA's health, and the
    count of fallbacks.

    :param clock: "now".
    :param max_records: fingerprints remembered at most.
    """

    def __init__(self, clock: IReactorTime, max_records: int = MAX_RECORDS):
        self._clock = clock
        self._max = max_records
        self._by_fingerprint: collections.OrderedDict[str, IssuedBy] = collections.OrderedDict()
        #: ``{ARI identifier: directory}`` (RFC 9773 §4.1), for ``replaces``.
        self._by_ari: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._health: dict[str, IssuerHealth] = {}
        #: ``{(from_directory, to_directory): count}`` of orders moved on.
        self.fallbacks: collections.Counter[tuple[str, str]] = collections.Counter()

    def health(self, directory: str) -> IssuerHealth:
        """The health of the CA at ``directory`` (created on first use)."""
        found = self._health.get(directory)
        if found is None:
            found = self._health[directory] = IssuerHealth(directory)
        return found

    def remember(self, fingerprint: str, issued_by: IssuedBy, ari_id: Optional[str] = None) -> None:
        """
        Record (in memory) that ``issued_by`` issued the certificate
        ``fingerprint`` (whose ARI identifier is ``ari_id``, if known).
        """
        for table, key, value in ((self._by_fingerprint, fingerprint, issued_by),
                                  (self._by_ari, ari_id, issued_by.directory)):
            if key is None:
                continue
            table.pop(key, None)
            table[key] = value
            while len(table) > self._max:
                table.popitem(last=False)

    def ari_owner(self, ari_id: str) -> Optional[str]:
        """The directory of the CA that issued the certificate with ARI identifier ``ari_id``, if known."""
        return self._by_ari.get(ari_id)

    def issued_by(self, certified: Any) -> Optional[IssuedBy]:
        """The CA that issued ``certified`` if this process knows it (no I/O), else ``None``."""
        return self._by_fingerprint.get(certified.fingerprint)

    def lookup(self, storage: IStorage, host: str, certified: Any) -> Deferred:
        """
        The CA that issued ``certified`` (``host``'s certificate): from
        memory, else from storage (what another node or an earlier run
        recorded; remembered then). Fires with ``None`` when unknown.
        """
        known = self.issued_by(certified)
        if known is not None:
            return succeed(known)

        def found(value: Optional[bytes]) -> Optional[IssuedBy]:
            if value is None:
                return None
            try:
                obj = json.loads(value)
                if obj.get("fingerprint") != certified.fingerprint:
                    return None  # the record is of an older certificate
                issued_by = IssuedBy(str(obj["directory"]), bool(obj.get("fallback", False)))
            except (ValueError, KeyError, TypeError, AttributeError):
                return None
            self.remember(certified.fingerprint, issued_by)
            return issued_by

        return storage.get(keys.issued_by(host)).addCallbacks(found, lambda f: None)


@implementer(IIssuer)
class IssuerChain:
    """
    :class:`IIssuer` over the primary CA and its fallbacks, tried in order.

    Every order starts at the primary (a renewal too: the fallback is for
    outages, not a new home), except that a CA which answered a
    ``Retry-After``, or timed out (for
    :data:`~kongacme.issuance.fallback.TIMEOUT_REST` s), is skipped until
    then while a later CA remains. An order failing through the CA's fault
    (:func:`~kongacme.issuance.fallback.ca_at_fault`) moves on to the next
    CA at once, with one warning line; any other failure ends the order
    there. When every CA failed, the last failure is
    raised (the manager's backoff follows). The ARI ``replaces`` identifier
    goes only to the CA that issued the certificate it names.

    :param issuers: ``DaemonAcmeIssuer``-like objects (``directory``,
        ``issue``, ``revoke``, ``renewal_info``, ``close``), primary first.
    :param ledger: records and health, kept across reloads.
    :param solvers: challenge solvers the issuers share (closed by :meth:`close`).
    """

    log = Logger()

    def __init__(
        self, issuers: list[Any], ledger: IssuerLedger, storage: IStorage, clock: IReactorTime, solvers: Any = ()
    ):
        if not issuers:
            raise ValueError("an issuer chain needs at least the primary")
        self._issuers = list(issuers)
        self.ledger = ledger
        self._storage = storage
        self._clock = clock
        self._solvers = list(solvers)
        for issuer in self._issuers:
            ledger.health(issuer.directory)

    @property
    def primary(self) -> Any:
        """The primary CA's issuer."""
        return self._issuers[0]

    @property
    def directories(self) -> list[str]:
        """The directory URLs, primary first."""
        return [issuer.directory for issuer in self._issuers]

    def issue(self, host: str, private_key: Any = None, replaces: Optional[str] = None) -> Deferred:
        return Deferred.fromCoroutine(self._issue(host, private_key, replaces))

    async def _issue(self, host: str, private_key: Any, replaces: Optional[str]) -> Any:
        chain = self._issuers
        failure: Optional[BaseException] = None
        # replaces (RFC 9773 §5) goes only to the CA that issued the
        # certificate it names (the primary when unknown): another CA would
        # refuse an identifier of a certificate it never issued.
        replaces_at = None if replaces is None else (self.ledger.ari_owner(replaces) or chain[0].directory)
        for position, issuer in enumerate(chain):
            health = self.ledger.health(issuer.directory)
            now = self._clock.seconds()
            last = position == len(chain) - 1
            if health.resting(now) and not last:
                nxt = chain[position + 1].directory
                self._moved_on(
                    host, issuer.directory, nxt,
                    "passed over for %.0f s more after: %s" % ((health.retry_after or now) - now, health.last_error),
                    skipped=True,
                )
                continue
            try:
                certified = await issuer.issue(
                    host, private_key, replaces=replaces if issuer.directory == replaces_at else None
                )
            except Exception as e:
                if not ca_at_fault(e):
                    if isinstance(e, AcmeError):
                        health.answered(e)  # the CA answered (a refusal), so it is up
                    raise
                health.ca_failed(e, self._clock.seconds())
                failure = e
                if not last:
                    self._moved_on(host, issuer.directory, chain[position + 1].directory, str(e))
                continue
            health.succeeded()
            self._record(host, certified, IssuedBy(issuer.directory, position > 0))
            return certified
        assert failure is not None
        raise failure

    def _moved_on(self, host: str, frm: str, to: str, reason: str, skipped: bool = False) -> None:
        self.ledger.fallbacks[(frm, to)] += 1
        if skipped:
            template = "certificate order for {host}: not asking {failed_ca} ({reason}): trying {next_ca} now"
        else:
            template = (
                "certificate order for {host} at {failed_ca} failed through the CA's fault ({reason}): "
                "trying {next_ca} now"
            )
        self.log.warn(template, host=host, failed_ca=frm, next_ca=to, reason=reason, log_unlimited=True)

    def _record(self, host: str, certified: Any, issued_by: IssuedBy) -> None:
        try:
            ari_id: Optional[str] = cert_id(certified.leaf)
        except ValueError:
            ari_id = None  # no Authority Key Identifier: cannot be named to ARI
        self.ledger.remember(certified.fingerprint, issued_by, ari_id)
        value = json.dumps(dict(issued_by.to_dict(), fingerprint=certified.fingerprint)).encode("utf-8")

        def failed(failure: Any) -> None:
            # Display only: the certificate itself is stored by the manager.
            if not failure.check(StorageError):
                self.log.failure("could not record the issuer of {host}'s certificate", failure, host=host)

        self._storage.set(keys.issued_by(host), value).addErrback(failed)

    def _issuer_of(self, certified: Any) -> Any:
        known = self.ledger.issued_by(certified)
        if known is not None:
            for issuer in self._issuers:
                if issuer.directory == known.directory:
                    return issuer
        return self.primary

    def revoke(self, certified: Any, reason: int = 0) -> Deferred:
        """Revoke ``certified`` at the CA that issued it (the primary when unknown)."""
        return self._issuer_of(certified).revoke(certified, reason)

    def renewal_info(self, certified: Any) -> Deferred:
        """ARI (RFC 9773) for ``certified`` from the CA that issued it (the primary when unknown)."""
        return self._issuer_of(certified).renewal_info(certified)

    def close(self) -> Deferred:
        """Close every CA's connections and the shared solvers."""
        closing = [issuer.close() for issuer in self._issuers]
        closing += [solver.close() for solver in self._solvers if hasattr(solver, "close")]
        return gatherResults(closing)

    def status(self) -> list[dict[str, Any]]:
        """Each CA in order with its role and health (Admin API, status page)."""
        return [
            dict(self.ledger.health(issuer.directory).status(), role="primary" if i == 0 else "fallback %d" % (i,))
            for i, issuer in enumerate(self._issuers)
        ]


def make_issuer(
    acme: Any,
    issuance: Any,
    storage: IStorage,
    token_store: IChallengeTokenStore,
    reactor: Any,
    previous: Optional[IssuerChain] = None,
    http_for: Optional[Callable[[str], Any]] = None,
    alpn_keys: Optional[IChallengeTokenStore] = None,
) -> IssuerChain:
    """
    The daemon's issuer: the primary (``acme``) and each of
    ``issuance.fallback_issuers``, each with its own account (stored under
    its own directory URL, so accounts never mix), connections and health,
    sharing the challenge solvers.

    A fallback takes from the primary: ``account_email`` (unless set),
    ``tos_accepted``, the key type and size, the preferred chain and
    ``issuance.ca_bundle`` (unless set); never the EAB credentials or the
    configured account key (each belongs to one CA). ZeroSSL's automatic EAB
    works for a ZeroSSL fallback as for the primary.

    :param previous: the chain this one replaces on a reload (its ledger
        is kept, so issuers of certificates stay known).
    :param http_for: ``directory URL -> treq HTTPClient`` (tests); by
        default each CA gets its own, verifying against its ``ca_bundle``.
    :param alpn_keys: where tls-alpn-01 key authorizations go.
    """
    http = http_for or (lambda directory: None)
    solvers = make_solvers(issuance, token_store, reactor, alpn_keys)
    issuers = [DaemonAcmeIssuer(acme, issuance, storage, token_store, reactor, solvers, http(acme.api_uri))]
    for fallback in issuance.fallback_issuers:
        their_acme = attrs.evolve(
            acme,
            api_uri=fallback.api_uri,
            account_email=fallback.account_email or acme.account_email,
            eab_kid=fallback.eab_kid,
            eab_hmac_key=fallback.eab_hmac_key,
            account_key=None,
        )
        their_issuance = attrs.evolve(issuance, ca_bundle=fallback.ca_bundle or issuance.ca_bundle)
        issuers.append(
            DaemonAcmeIssuer(their_acme, their_issuance, storage, token_store, reactor, solvers, http(fallback.api_uri))
        )
    ledger = previous.ledger if previous is not None else IssuerLedger(reactor)
    return IssuerChain(issuers, ledger, storage, reactor, solvers)
