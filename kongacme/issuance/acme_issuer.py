"""
The daemon's ACME issuer: connects to the CA on first use with the account
key kept in storage under Kong's key, and reconnects after the CA was
unreachable.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import HTTPConnectionPool
from zope.interface import implementer

from kongacme.acme import AcmeClient, AcmeIssuer, account_key_from_pem, account_key_pem, generate_account_key
from kongacme.acme import make_http_client
from kongacme.errors import AcmeProblem
from kongacme.interfaces import IChallengeTokenStore, IIssuer, IStorage
from kongacme.issuance.admission import Admission
from kongacme.issuance.solvers import make_solvers
from kongacme.storage import keys


def _quiet_pool(pool: HTTPConnectionPool) -> None:
    """
    No "Starting factory"/"Stopping factory" info lines per connection to
    the CA (Twisted's HTTP/1.1 client factory is noisy by default).
    """
    factory = getattr(pool, "_factory", None)
    if isinstance(factory, type) and getattr(factory, "noisy", False):
        pool._factory = type("QuietHTTP11ClientFactory", (factory,), {"noisy": False})


@implementer(IIssuer)
class DaemonAcmeIssuer:
    """
    :class:`IIssuer` for the configured CA.

    The account key is, in order: the one stored under
    ``kong_acme:account:<api_uri>:<base64(email)>`` (shared with Kong
    nodes), the configured ``account_key`` (stored on first use), or a new
    one (stored). The registered client is kept and reused; a transport
    failure or a rejected account drops it so the next order reconnects.
    Challenges are answered per ``issuance.challenge_types``; a wildcard
    name's certificate holds its base name too when that is in
    ``acme.domains`` (:meth:`Admission.certificate_names`).

    :param acme: the ``acme`` config section (Kong's); a fallback CA gets
        a copy with its own ``api_uri``, email and EAB.
    :param issuance: the ``issuance`` config section.
    :param solvers: the challenge solvers, when shared with other issuers
        (``None``: built here, and closed by :meth:`close`).
    :param http: the treq ``HTTPClient`` to the CA (tests: ``StubTreq``);
        ``None``: one verifying against ``issuance.ca_bundle``.
    """

    log = Logger()

    #: The CA's directory URL.
    directory: str

    def __init__(
        self,
        acme: Any,
        issuance: Any,
        storage: IStorage,
        token_store: IChallengeTokenStore,
        reactor: Any,
        solvers: Optional[list] = None,
        http: Any = None,
    ):
        self._acme = acme
        self.directory = acme.api_uri
        self._issuance = issuance
        self._http = http
        self._storage = storage
        self._token_store = token_store
        self._reactor = reactor
        # Built once: the DNS provider remembers the zones it found.
        self._owns_solvers = solvers is None
        self._solvers = make_solvers(issuance, token_store, reactor) if solvers is None else solvers
        self._names = Admission(acme.domains, acme.allow_any_domain, wildcard=issuance.wildcard)
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        # Keep as many idle connections to the CA as orders may run at once:
        # with 4, a burst of orders reopened hundreds of HTTPS connections
        # (a quarter of the daemon's CPU in bench/issuance.py).
        self._pool.maxPersistentPerHost = max(4, issuance.max_orders_in_flight)
        _quiet_pool(self._pool)
        self._client: Optional[AcmeClient] = None
        self._connecting: Optional[Deferred] = None
        self._waiters: list[Deferred] = []

    def issue(self, host: str, private_key: Any = None, replaces: Optional[str] = None) -> Deferred:
        def with_client(client: AcmeClient) -> Deferred:
            issuer = AcmeIssuer(
                client,
                self._token_store,
                cert_type=self._acme.cert_type,
                rsa_key_size=self._acme.rsa_key_size,
                preferred_chain=self._acme.preferred_chain,
                reactor=self._reactor,
                solvers=self._solvers,
            )
            also = self._names.certificate_names(host)[1:]
            return issuer.issue(host, private_key, replaces=replaces, also=also)

        def forget_client(failure: Any) -> Any:
            value = failure.value
            if not isinstance(value, AcmeProblem) or "accountDoesNotExist" in value.type or value.status == 401:
                # Unreachable CA, garbage, or an account problem: start over next time.
                self._client = None
            return failure

        return self.client().addCallback(with_client).addErrback(forget_client)

    def revoke(self, certified: Any, reason: int = 0) -> Deferred:
        """
        Revoke ``certified``'s leaf certificate at the CA (RFC 8555 §7.6),
        signed with the daemon's account key.

        :param certified: a :class:`~kongacme.tls.certs.CertifiedKey`.
        :param reason: an RFC 5280 CRLReason code (0: unspecified).
        :return: ``Deferred`` firing with ``None``, or failing as
            :meth:`kongacme.acme.client.AcmeClient.revoke` does.
        """

        def with_client(client: AcmeClient) -> Deferred:
            return client.revoke(certified.leaf, reason)

        return self.client().addCallback(with_client)

    def client(self) -> Deferred:
        """The registered client, connecting first if needed (one attempt at a time)."""
        if self._client is not None:
            return succeed(self._client)
        waiter: Deferred = Deferred()
        if self._connecting is None:
            self._waiters = [waiter]
            self._connecting = self._connect()

            def done(result: Any) -> None:
                # Every waiter gets the client (or the failure): the old
                # relay returned None down the shared chain, so every
                # concurrent caller after the first got None.
                self._connecting = None
                waiters, self._waiters = self._waiters, []
                for each in waiters:
                    each.errback(result) if isinstance(result, Failure) else each.callback(result)

            self._connecting.addBoth(done)
        else:
            self._waiters.append(waiter)
        return waiter

    @inlineCallbacks
    def _connect(self):
        acme = self._acme
        storage_key = keys.account_key(acme.api_uri, acme.account_email)
        stored = yield self._storage.get(storage_key)
        if stored is not None:
            pem = keys.decode_account(stored, storage_key)
        else:
            pem = self._configured_account_key()
            if pem is None:
                pem = account_key_pem(generate_account_key("ecc"))
            yield self._storage.set(storage_key, keys.encode_account(pem))
        key = account_key_from_pem(pem)
        http = self._http or make_http_client(
            self._reactor, self._issuance.ca_bundle, pool=self._pool, connect_timeout=self._issuance.request_timeout
        )
        client = yield AcmeClient.from_directory(
            acme.api_uri, http, self._reactor, key, timeout=self._issuance.request_timeout
        )
        eab = (acme.eab_kid, acme.eab_hmac_key) if acme.eab_kid and acme.eab_hmac_key else None
        account = yield client.register(
            acme.account_email, acme.tos_accepted, eab, zerossl_eab_url=self._issuance.zerossl_eab_url
        )
        self.log.info("ACME account {account} at {directory}", account=account, directory=acme.api_uri)
        self._client = client
        return client

    def _configured_account_key(self) -> Optional[bytes]:
        account_key = self._acme.account_key
        if account_key is None:
            return None
        if getattr(account_key, "pem", None):
            return account_key.pem.encode() if isinstance(account_key.pem, str) else account_key.pem
        if getattr(account_key, "path", None):
            with open(account_key.path, "rb") as f:
                return f.read()
        return None

    def renewal_info(self, certified: Any) -> Deferred:
        """
        The CA's ARI window for ``certified`` (RFC 9773), or ``None`` when
        the CA's directory has no ``renewalInfo``.
        """
        from kongacme.acme.ari import fetch_renewal_info

        return self.client().addCallback(lambda client: fetch_renewal_info(client, certified.leaf))

    @staticmethod
    def ari_id(certified: Any) -> str:
        """``certified``'s ARI identifier, the ``replaces`` of its renewal order."""
        from kongacme.acme.ari import cert_id

        return cert_id(certified.leaf)

    def close(self) -> Deferred:
        """Close persistent connections to the CA and the DNS provider's sockets (at shutdown)."""
        closing = [self._pool.closeCachedConnections()]
        if self._owns_solvers:
            closing += [solver.close() for solver in self._solvers if hasattr(solver, "close")]
        return gatherResults(closing)


