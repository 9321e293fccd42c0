"""
The certificate manager: one order at a time per host, Kong's backoff and
lock keys, rate limits for orders started from handshakes, and the
handshake gate that lets the first visitor wait for its certificate.
"""

from __future__ import annotations

import collections
from typing import Any, Callable, Optional

import attrs
from twisted.internet.defer import Deferred, fail, inlineCallbacks
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from kongacme.errors import AcmeError, AcmeProblem, BackoffActive, IssuanceError, NotAdmitted
from kongacme.errors import DNSError, OrderInProgress, StoragePaused
from kongacme.failures import describe_failure
from kongacme.interfaces import IHandshakeGate, IIssuer, IStorage
from kongacme.issuance.admission import Admission
from kongacme.issuance.health import StorageHealth
from kongacme.issuance.recent import MAX_ENTRIES, ExpiringMap
from kongacme.issuance.stored import load_all, served_names, stored_certificate
from kongacme.storage import keys
from kongacme.storage.errors import StorageError
from kongacme.storage.locks import LockOwner, StorageLocker
from kongacme.tls.cache import CertificateCache
from kongacme.tls.certs import CertifiedKey

#: The order lock's lease, as Kong's 30 s lock; unlike Kong's it is renewed
#: every LOCK_TTL / 3 seconds while the order runs, so a long order never
#: lets a second node start a duplicate, and a crashed holder frees it
#: within LOCK_TTL.
LOCK_TTL = 30.0

#: How long a failed order's error is reported (``last_errors``, metrics).
ERROR_MAX_AGE = 3600.0


def describe(failure: Failure) -> str:
    """A one-line reason for an issuance failure (problem documents in full)."""
    value = failure.value
    if isinstance(value, IssuanceError):
        return value.message
    if isinstance(value, (AcmeProblem, DNSError)):
        return str(value)
    return describe_failure(failure)


def failure_reason(error: BaseException) -> str:
    """
    A small fixed vocabulary for why an order failed (metrics label):
    ``backoff``, ``not_admitted``, ``in_progress``, ``storage``, ``ca_problem``,
    ``ca_unreachable`` or ``other`` (a dns-01 record that could not be
    written, among others).
    """
    from kongacme.errors import AcmeTransportError

    if isinstance(error, BackoffActive):
        return "backoff"
    if isinstance(error, NotAdmitted):
        return "not_admitted"
    if isinstance(error, OrderInProgress):
        return "in_progress"
    if isinstance(error, (StoragePaused, StorageError)):
        return "storage"
    if isinstance(error, AcmeProblem):
        return "ca_problem"
    if isinstance(error, AcmeError):
        # Transport errors, poll timeouts, orders the CA left invalid.
        return "ca_unreachable" if isinstance(error, AcmeTransportError) else "ca_problem"
    return "other"


@attrs.frozen
class _Renewal:
    """What a renewal order needs beyond a first order."""

    current: CertifiedKey
    reuse_key: bool
    replaces: Optional[str]
    still_due: Callable[[CertifiedKey], bool]


@implementer(IHandshakeGate)
class CertificateManager:
    """
    Obtains certificates for admitted hosts and puts them where the TLS path
    finds them (the cache) and where other processes find them (storage,
    under Kong's keys).

    :param cache: the in-process certificate cache.
    :param storage: where certificates, backoff and lock keys live.
    :param issuer: the ACME issuer.
    :param clock: "now" and timers.
    :param admission: which hosts may get certificates.
    :param settings: the ``issuance`` config section.
    :param fail_backoff_minutes: Kong's per-host pause after a failure.
    :param lock_owner: whose tokens the order locks hold (stable per node
        and ``state_dir``, see :func:`kongacme.storage.locks.node_owner`);
        by default a node id for this run only.
    :param max_entries: per-host errors, backoffs and refusals remembered
        at most (oldest dropped first; each also expires).
    """

    log = Logger()

    def __init__(
        self,
        cache: CertificateCache,
        storage: IStorage,
        issuer: IIssuer,
        clock: IReactorTime,
        admission: Admission,
        settings: Any,
        fail_backoff_minutes: float = 5.0,
        lock_owner: Optional[LockOwner] = None,
        max_entries: int = MAX_ENTRIES,
    ):
        self._cache = cache
        self._storage = storage
        self._issuer = issuer
        self._locker = StorageLocker(storage, lock_owner or LockOwner.ephemeral())
        self._clock = clock
        self.admission = admission
        self.settings = settings
        self.fail_backoff_minutes = fail_backoff_minutes
        self._in_flight: dict[str, Deferred] = {}
        self._starts: collections.deque[float] = collections.deque()
        # Per-host memory expires and is capped: with allow_any_domain a
        # flood of random names must not grow it without bound.
        #: ``{host: until}`` for the backoffs this node knows of (each entry
        #: goes when its backoff ends).
        self._backoff_until: ExpiringMap[float] = ExpiringMap(clock, 0.0, max_entries)
        self._refused_logged: ExpiringMap[bool] = ExpiringMap(clock, 60.0, max_entries)
        self.stats: collections.Counter[str] = collections.Counter()
        #: ``{host: reason}`` of failed orders, for an hour at most.
        self.last_error: ExpiringMap[str] = ExpiringMap(clock, ERROR_MAX_AGE, max_entries)
        self._unsaved: dict[str, CertifiedKey] = {}
        #: Whether storage answers; while it does not, no new orders start.
        self.health = StorageHealth(storage, clock)
        #: Called with ``(host, fingerprint)`` once a certificate is stored
        #: (the fleet propagator announces it to the other nodes).
        self.on_stored: Optional[Callable[[str, str], Any]] = None

    def reconfigure(self, issuer: IIssuer, admission: Admission, settings: Any, fail_backoff_minutes: float) -> None:
        """Apply reloaded settings; orders in flight finish with the old issuer."""
        self._issuer = issuer
        self.admission = admission
        self.settings = settings
        self.fail_backoff_minutes = fail_backoff_minutes

    # -- the handshake gate --------------------------------------------------

    def before_handshake(self, server_name: str | None) -> Deferred | None:
        """
        Start an order for an admitted name without a certificate and, when
        ``first_handshake`` is ``wait``, hold the handshake until it ends or
        ``handshake_wait`` passes. Never raises.
        """
        if server_name is None or not self.settings.on_demand:
            return None
        if self._cache.lookup(server_name) is not self._cache.fallback:
            return None
        # The order runs under the certificate's name: *.example.com for
        # a.example.com with issuance.wildcard.
        name = self.admission.certificate_name(server_name)
        shared = self._in_flight.get(name)
        if shared is None:
            if not self.admission.admits(server_name):
                return None
            now = self._clock.seconds()
            if name in self._backoff_until:
                self.stats["handshake_backoff"] += 1
                return None
            if not self.health.available:
                self.stats["handshake_storage_paused"] += 1
                return None
            refusal = self._rate_limited(now)
            if refusal is not None:
                self.stats["handshake_rate_limited"] += 1
                self._log_refusal(server_name, refusal, now)
                return None
            self.obtain(server_name, origin="handshake").addErrback(lambda f: None)
            shared = self._in_flight.get(name)
            if shared is None:  # finished synchronously (e.g. found in storage)
                return None
        if self.settings.first_handshake != "wait":
            return None
        return self._waiter(shared, self.settings.handshake_wait, server_name)

    def _waiter(self, shared: Deferred, limit: float, server_name: str) -> Deferred:
        waiter: Deferred = Deferred()

        def release(outcome: str) -> None:
            # stats (metrics): held handshakes by how the wait ended.
            if not waiter.called:
                self.stats["handshake_held_" + outcome] += 1
                waiter.callback(None)

        timer = self._clock.callLater(limit, release, "timeout")

        def done(result: object) -> object:
            if timer.active():
                timer.cancel()
            # The order's failure is not seen here (obtain's relay took it).
            release("failed" if self._cache.lookup(server_name) is self._cache.fallback else "issued")
            return result

        shared.addBoth(done)
        return waiter

    def _rate_limited(self, now: float) -> str | None:
        while self._starts and self._starts[0] <= now - 60.0:
            self._starts.popleft()
        if len(self._in_flight) >= self.settings.max_orders_in_flight:
            return "%d orders already in flight (issuance.max_orders_in_flight)" % (len(self._in_flight),)
        if len(self._starts) >= self.settings.orders_per_minute:
            return "%d orders started in the last minute (issuance.orders_per_minute)" % (len(self._starts),)
        return None

    def _log_refusal(self, host: str, reason: str, now: float) -> None:
        if host in self._refused_logged:
            return  # logged for this host within the last minute
        self._refused_logged[host] = True
        self.log.warn("not ordering a certificate for {host} now: {reason}; serving the fallback", host=host,
                      reason=reason)

    # -- orders ----------------------------------------------------------------

    def in_progress(self, host: str) -> bool:
        """Whether an order for ``host`` is running in this process."""
        return host in self._in_flight

    def obtain(self, host: str, origin: str = "admin", force: bool = False) -> Deferred:
        """
        Get a certificate for ``host``: join the order already running for
        it, or start one. With ``issuance.wildcard`` a host one label below
        a ``*.`` entry gets the wildcard certificate (ordered, stored and
        backed off under the wildcard name).

        :param force: order a new certificate even if storage holds a valid
            one (Kong's ``POST /acme`` always orders).

        :return: ``Deferred`` firing with the :class:`CertifiedKey`, or
            failing with :class:`IssuanceError` (Kong-style message) or the
            CA's :class:`AcmeProblem`.
        """
        host = host.lower()
        name = self.admission.certificate_name(host)
        if name not in self._in_flight:
            reason = self.admission.reason(host)
            if reason is not None:
                return fail(NotAdmitted(host, "host %s is not allowed: %s" % (host, reason)))
        return self._join(name, lambda: self._run(name, origin, force))

    def renew(
        self,
        host: str,
        current: CertifiedKey,
        *,
        reuse_key: bool = True,
        replaces: Optional[str] = None,
        still_due: Callable[[CertifiedKey], bool] = lambda certified: True,
    ) -> Deferred:
        """
        Renew ``host``'s certificate ``current`` (for the renewal service):
        join the order already running for the host, or take the order
        lock and order, reusing the private key when ``reuse_key`` (Kong's
        behaviour). Under the lock, a certificate another node stored
        meanwhile that ``still_due`` says is not due is taken instead of
        ordering (one node renews each certificate in a fleet).

        :param replaces: the ARI identifier of ``current`` (RFC 9773 §5).
        :return: ``Deferred`` firing with the new :class:`CertifiedKey`.
        """
        host = self.admission.certificate_name(host.lower())
        renewal = _Renewal(current, reuse_key, replaces, still_due)
        return self._join(host, lambda: self._run(host, "renewal", True, renewal))

    def _join(self, host: str, start: Callable[[], Deferred]) -> Deferred:
        """Join the order running for ``host``, or start one with ``start``."""
        shared = self._in_flight.get(host)
        if shared is None:
            if not self.health.available:
                return fail(StoragePaused(host))
            self._starts.append(self._clock.seconds())
            shared = start()
            if shared.called:
                return shared
            self._in_flight[host] = shared

            def finished(result: object) -> object:
                self._in_flight.pop(host, None)
                return result

            shared.addBoth(finished)
        joined: Deferred = Deferred()

        def relay(result: object) -> object:
            joined.callback(result) if not isinstance(result, Failure) else joined.errback(result)
            return None if isinstance(result, Failure) else result

        shared.addBoth(relay)
        return joined

    def _from_other_node(self, host: str) -> Deferred:
        """
        The certificate another node is ordering for ``host``, once this
        node's cache has it; ``None`` after ``handshake_wait`` seconds.
        """
        deadline = self._clock.seconds() + self.settings.handshake_wait
        result: Deferred = Deferred()

        def check() -> None:
            found = self._cache.get(host)
            if found is not None:
                result.callback(found)
            elif self._clock.seconds() >= deadline:
                result.callback(None)
            else:
                self._clock.callLater(0.1, check)

        check()
        return result

    @inlineCallbacks
    def _log_lock_wait(self, host: str, lock: str):
        """One line: a visitor for ``host`` waits because another node holds its lock."""
        try:
            holder = yield self._locker.holder(lock)
        except StorageError:
            holder = None
        self.stats["handshake_lock_held_elsewhere"] += 1
        self.log.info(
            "another node holds the order lock for {host} ({holder}): the handshake waits up to {wait:.0f} s "
            "for that node's certificate",
            host=host, holder=holder or "unknown holder", wait=self.settings.handshake_wait,
        )

    @inlineCallbacks
    def _storage_call(self, host: str, operation: Callable[[], Deferred]):
        """Run a storage operation for an order; storage down pauses orders."""
        try:
            result = yield operation()
        except StorageError as e:
            self.health.failed(e)
            raise StoragePaused(host) from e
        self.health.succeeded()
        return result

    @inlineCallbacks
    def _run(self, host: str, origin: str, force: bool = False, renewal: Optional["_Renewal"] = None):
        started = self._clock.seconds()
        if renewal is None:
            yield self._check_backoff(host)
        lock = keys.update_lock(host)
        lease = yield self._storage_call(host, lambda: self._locker.acquire(lock, LOCK_TTL))
        if lease is None:
            if origin == "handshake":
                yield self._log_lock_wait(host, lock)
                # Another node is ordering it: wait (at most handshake_wait)
                # for its certificate to reach this node's cache through
                # fleet propagation, so this node's first visitor gets it
                # too rather than the fallback.
                theirs = yield self._from_other_node(host)
                if theirs is not None:
                    return theirs
            raise OrderInProgress(host)
        keeper = self._keep_lease(lease, host)
        try:
            if renewal is not None:
                existing = yield self._storage_call(host, lambda: self._stored_certificate(host))
                if (
                    existing is not None
                    and existing.fingerprint != renewal.current.fingerprint
                    and not renewal.still_due(existing)
                ):
                    # Another node renewed it while this one waited for the lock.
                    self._cache.put(existing, self._served_names(host, existing))
                    self.log.info("certificate for {host} was renewed by another node", host=host)
                    return existing
            elif not force:
                existing = yield self._storage_call(host, lambda: self._stored_certificate(host))
                if existing is not None:
                    self._cache.put(existing, self._served_names(host, existing))
                    self.log.info("certificate for {host} found in storage", host=host)
                    return existing
            certified = yield self._order(host, origin, started, renewal)
            return certified
        finally:
            # Not yielded: a finally clause must not suspend the generator.
            if keeper.running:
                keeper.stop()
            lease.release().addErrback(self._release_failed, host)

    @inlineCallbacks
    def _order(self, host: str, origin: str, started: float, renewal: Optional["_Renewal"]):
        """Order from the CA (the lock is held), serve and store the result."""
        self.stats["orders_started"] += 1
        # log_unlimited: one line per order, bounded by the order caps, never rate-limited (kongacme.logs).
        self.log.info("ordering a certificate for {host} ({origin})", host=host, origin=origin, log_unlimited=True)
        try:
            if renewal is None:
                certified = yield self._issuer.issue(host)
            else:
                key = renewal.current.key if renewal.reuse_key else None
                certified = yield self._issuer.issue(host, key, replaces=renewal.replaces)
        except Exception:
            failure = Failure()
            self.stats["orders_failed"] += 1
            self.stats["orders_failed:" + failure_reason(failure.value)] += 1
            if renewal is None:
                yield self._fail(host, failure)
            else:
                self.last_error[host] = describe(failure)
            failure.raiseException()
        # Served from now on even if storage is down; the write is
        # retried until it lands (a certificate is never silently lost).
        self._cache.put(certified, self._served_names(host, certified))
        self._persist(host, certified)
        self._backoff_until.pop(host, None)
        self.last_error.pop(host, None)
        self.stats["orders_succeeded"] += 1
        ledger = getattr(self._issuer, "ledger", None)
        issued_by = None if ledger is None else ledger.issued_by(certified)
        self.log.info(
            "certificate for {host} issued in {seconds:.3f} s, valid until {not_after}{by_fallback}",
            host=host,
            seconds=self._clock.seconds() - started,
            not_after=certified.not_after.isoformat(),
            directory=None if issued_by is None else issued_by.directory,
            by_fallback=", by the fallback CA %s" % (issued_by.directory,) if issued_by and issued_by.fallback else "",
            log_unlimited=True,
        )
        return certified

    @inlineCallbacks
    def _check_backoff(self, host: str):
        """Raise :class:`BackoffActive` while Kong's backoff key for ``host`` runs."""
        backoff = yield self._storage_call(host, lambda: self._storage.get(keys.fail_backoff(host)))
        until = None
        if backoff is not None:
            try:
                until = keys.decode_backoff(backoff, keys.fail_backoff(host))
            except ValueError:
                # Kong treats a value that is not a number as no backoff.
                self.log.warn("ignoring corrupt backoff value for {host}", host=host)
        if until is not None:
            remaining = until - self._clock.seconds()
            if remaining > 0:
                self._backoff_until.put(host, until, until)
                raise BackoffActive(host, remaining)

    def _release_failed(self, failure: Failure, host: str) -> None:
        if failure.check(StorageError):
            # Expected while storage is down; the lease expires by itself.
            self.log.warn("could not release the order lock for {host} ({error}); it expires within {ttl:.0f} s",
                          host=host, error=failure.getErrorMessage(), ttl=LOCK_TTL)
        else:
            self.log.failure("could not release the order lock for {host}", failure, host=host)

    def _keep_lease(self, lease: Any, host: str) -> LoopingCall:
        """Renew ``lease`` every LOCK_TTL / 3 seconds until stopped."""

        def renew() -> Deferred:
            def renewed(held: bool) -> None:
                if not held:
                    self.log.warn("lost the order lock for {host} (storage unavailable or expired)", host=host)

            return lease.renew(LOCK_TTL).addCallbacks(
                renewed, lambda f: self.log.warn("could not renew the order lock for {host}: {e}", host=host,
                                                 e=f.getErrorMessage())
            )

        keeper = LoopingCall(renew)
        keeper.clock = self._clock
        keeper.start(LOCK_TTL / 3.0, now=False).addErrback(
            lambda f: self.log.failure("order lock keeper for {host} stopped", f, host=host)
        )
        return keeper

    #: Seconds between attempts to store an issued certificate while
    #: storage is failing.
    persist_retry = 5.0

    def _persist(self, host: str, certified: CertifiedKey, attempt: int = 1) -> Deferred:
        """Write the certificate under Kong's keys, retrying until it succeeds."""

        def write() -> Deferred:
            d = self._storage.set(keys.cert_key(host), keys.encode_cert_key(certified))
            d.addCallback(
                lambda _: self._storage.set(
                    keys.renew_config(host), keys.encode_renew_config(host, certified.not_after.timestamp())
                )
            )
            return d

        def stored(_: object) -> None:
            self.health.succeeded()
            self._unsaved.pop(host, None)
            if self.on_stored is not None:
                self.on_stored(host, certified.fingerprint)
            if attempt > 1:
                self.log.info("certificate for {host} stored after {attempts} attempts", host=host, attempts=attempt)

        def failed(failure: Failure) -> None:
            if self._unsaved.get(host) is not certified:
                return  # a newer certificate replaced it
            if failure.check(StorageError):
                self.health.failed(failure.value)
            self.log.error(
                "could not store the certificate for {host} (attempt {attempt}): {error}; it is served from "
                "memory and the write is retried in {delay:.0f} s",
                host=host, attempt=attempt, error=failure.getErrorMessage(), delay=self.persist_retry,
            )
            self._clock.callLater(self.persist_retry, self._persist, host, certified, attempt + 1)

        self._unsaved[host] = certified
        return write().addCallbacks(stored, failed)

    @inlineCallbacks
    def _fail(self, host: str, failure: Failure):
        seconds = self.fail_backoff_minutes * 60.0
        until = self._clock.seconds() + seconds
        retry_after = getattr(failure.value, "retry_after", None)
        if retry_after:
            until = max(until, self._clock.seconds() + retry_after)
        self._backoff_until.put(host, until, until)
        reason = describe(failure)
        self.last_error[host] = reason
        self.log.warn(
            "certificate order for {host} failed, next attempt in {backoff:.0f} s: {reason}",
            host=host,
            backoff=until - self._clock.seconds(),
            reason=reason,
            problem=failure.value.to_dict() if isinstance(failure.value, AcmeProblem) else None,
            log_unlimited=True,
        )
        try:
            yield self._storage.set(keys.fail_backoff(host), keys.encode_backoff(until), until - self._clock.seconds())
        except StorageError as e:
            self.log.warn("could not store the backoff for {host} ({error}); it holds on this node only",
                          host=host, error=str(e))
        except Exception:
            self.log.failure("could not store the backoff for {host}", host=host)

    def _served_names(self, name: str, certified: CertifiedKey) -> list[str]:
        """The names a certificate ordered under ``name`` is served for (a wildcard's base name too)."""
        return served_names(name, certified)

    def _stored_certificate(self, host: str) -> Deferred:
        """A still-usable certificate for ``host`` from storage, or None."""
        return stored_certificate(self._storage, host, self._clock.seconds())

    def load_from_storage(self) -> Deferred:
        """
        Put every certificate found in storage into the cache (at start).
        Corrupt entries are reported and skipped.

        :return: ``Deferred`` firing with the number loaded.
        """
        return load_all(self._storage, self._cache)

    def status(self) -> dict:
        """Counters and hosts in flight, for the Admin API."""
        return {
            "in_flight": sorted(self._in_flight),
            "stats": dict(self.stats),
            "last_errors": dict(self.last_error),
            "not_yet_stored": sorted(self._unsaved),
            "storage": self.health.status(),
        }


