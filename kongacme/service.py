"""
The daemon as a Twisted service: builds the certificate cache, the TLS,
HTTP and Admin listeners from a :class:`DaemonConfig`, and applies a new
configuration on reload (SIGHUP) without dropping connections.
"""

from __future__ import annotations

import collections
import gc
import os

import attrs

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.logger import ILogObserver, Logger

from kongacme import __version__
from kongacme.config import DaemonConfig, load_config
from kongacme.errors import CertificateError, ConfigError
from kongacme.fleet.propagation import Propagator
from kongacme.issuance.acme_issuer import DaemonAcmeIssuer
from kongacme.issuance.issuers import IssuerChain, make_issuer
from kongacme.issuance.admission import Admission
from kongacme.issuance.manager import CertificateManager
from kongacme.connlimit import ConnectionLimiter, derive_budget, open_file_limit
from kongacme.engine.lean import LeanEngine
from kongacme.listeners import ListenerSet, update_listeners
from kongacme.logs import DaemonLogObserver, make_observer
from kongacme.proxy.forward import ProxyFactory
from kongacme.proxy.routes import RouteTable
from kongacme.renewal.service import RenewalService
from kongacme.tls.cache import CertificateCache
from kongacme.tls.certs import CertifiedKey, load_certified_key_files, names_from
from kongacme.tls.context import ContextBuilder
from kongacme.tls.fallback import load_or_create_fallback
from kongacme.tls.alpn_challenge import ChallengeResponder
from kongacme.tls.protocol import TLSServerFactory
from kongacme.tls.tickets import pyopenssl_tickets
from kongacme.storage import storage_from_config
from kongacme.storage.instrumented import instrument
from kongacme.storage.locks import node_owner
from kongacme.storage.alpn_keys import TlsAlpnKeyAuthorizations
from kongacme.storage.tokens import StorageChallengeTokenStore, SwitchableTokenStore
from kongacme.web.admin import make_admin_factory
from kongacme.web.admin_acme import AcmeAdmin
from kongacme.web.admin_acme import install as install_acme_admin
from kongacme.web.admin_certificates import CertificatesAdmin
from kongacme.web.admin_certificates import install as install_certificates_admin
from kongacme.web.openapi import install as install_openapi
from kongacme.web.visibility import install_visibility
from kongacme.web.challenge import make_http_factory
from kongacme.web.tokens import MemoryChallengeTokenStore
from kongacme.workers.master import WorkerMode, reload_refusal


def tune_gc() -> None:
    """
    Make the cyclic garbage collector cheap on the connection path.

    Profiles of the handshake path showed ~10% of CPU in gc_collect_main:
    every connection allocates a few hundred objects, so the default gen-0
    threshold (700) starts a collection every couple of connections, and
    older generations re-scan every long-lived object (certificates,
    contexts, modules). Objects alive after start-up are frozen out of the
    collector's view, and collections run less often; per-connection
    objects are freed by reference counting anyway.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)


class StartupError(Exception):
    """The daemon cannot start (a listener or a certificate failed)."""


def load_static_certificates(config: DaemonConfig) -> list[tuple[tuple[str, ...], CertifiedKey]]:
    """
    Load every static certificate in ``config``.

    :raises ConfigError: naming the ``certificates[i]`` entry that failed.
    """
    loaded = []
    problems = []
    for index, entry in enumerate(config.certificates):
        try:
            certified = load_certified_key_files(entry.cert, entry.key)
        except CertificateError as e:
            problems.append(("certificates[%d]" % (index,), str(e)))
            continue
        names = names_from(entry.hosts, certified)
        if not names:
            problems.append(("certificates[%d]" % (index,), "certificate has no DNS name; give hosts:"))
            continue
        loaded.append((names, certified))
    if problems:
        raise ConfigError(problems)
    return loaded


class DaemonService(MultiService):
    """
    kongacme's top-level service.

    :param reactor: the reactor (listening, timers, "now").
    :param config: the validated configuration.
    :param config_path: re-read by :meth:`reload`; ``None`` disables reload
        from a file (tests pass configs directly to :meth:`apply`).
    """

    log = Logger()
    #: The process's log observer, once twistd has taken it (reopened and
    #: reconfigured on reload); ``None`` when not run by twistd.
    log_observer: DaemonLogObserver | None = None

    def __init__(self, reactor, config: DaemonConfig, config_path: str | None = None):
        super().__init__()
        self._reactor = reactor
        self.config = config
        self.config_path = config_path
        # Tokens live in the shared storage once acme is configured, so any
        # node (or a Kong node) the CA reaches can answer.
        self.token_store = SwitchableTokenStore(MemoryChallengeTokenStore(reactor))
        # tls-alpn-01 key authorizations: memory, and the storage once set.
        self.alpn_keys = TlsAlpnKeyAuthorizations(reactor)
        self.router = RouteTable.from_config(config.routes, config.default_route)
        self.cache: CertificateCache | None = None
        self.builder = ContextBuilder(
            reactor,
            session_tickets=config.tls.session_tickets,
            ticket_key_rotation=config.tls.ticket_key_rotation,
        )
        self.proxy_factory = ProxyFactory(
            self.router,
            reactor,
            connect_timeout=config.proxy.connect_timeout,
            idle_timeout=config.proxy.idle_timeout,
        )
        self.tls_factory: TLSServerFactory | None = None
        #: The lean engine (``listen.engine: lean``), set at start.
        self.lean: LeanEngine | None = None
        self.http_factory = make_http_factory(
            self.token_store,
            mode=config.http.mode,
            router_getter=lambda: self.router,
            https_port=config.http.https_port,
            max_header_bytes=config.http.max_header_bytes,
            request_timeout=config.http.request_timeout,
            reactor=reactor,
        )
        self.admin_factory = make_admin_factory(
            self.status,
            token=config.admin.token,
            reactor=reactor,
            request_timeout=config.admin.request_timeout,
            max_header_bytes=config.admin.max_header_bytes,
        )
        self.acme_admin = AcmeAdmin(lambda: self.manager, reactor, challenge_port=config.issuance.challenge_port)
        install_acme_admin(self.admin_factory, self.acme_admin)
        self.certificates_admin = CertificatesAdmin(
            lambda: getattr(self, "renewal", None),
            lambda: self.storage,
            lambda: self.cache,
            lambda: self._static_names,
            lambda: self.issuer,
            reactor,
        )
        install_certificates_admin(self.admin_factory, self.certificates_admin)
        install_openapi(self.admin_factory)
        self.visibility = install_visibility(self.admin_factory, self, reactor)
        self.storage = None
        self.storage_errors: collections.Counter = collections.Counter()
        self.issuer: IssuerChain | None = None
        self.manager: CertificateManager | None = None
        self.propagator: Propagator | None = None
        self.renewal: RenewalService | None = None
        self._load_retry_call = None
        self._static_names: set[str] = set()
        self.listeners: dict[str, ListenerSet] = {}
        #: Connection counts and caps per listener (set at start).
        self.connection_limiter: ConnectionLimiter | None = None
        self._nofile: int | None = None
        #: With ``workers`` > 1, what the master does for its workers.
        self.workers: WorkerMode | None = None
        self.reloads = 0
        self.last_reload_error: str | None = None

    # -- twistd hooks -------------------------------------------------------

    def setServiceParent(self, parent) -> None:
        # twistd asks the Application for an ILogObserver before it starts
        # logging; that is how the config's logging section takes effect.
        super().setServiceParent(parent)
        setComponent = getattr(parent, "setComponent", None)
        if setComponent is not None:
            logging = self.config.logging
            self.log_observer = make_observer(logging.level, logging.format, logging.file, clock=self._reactor)
            setComponent(ILogObserver, self.log_observer)

    def privilegedStartService(self) -> None:
        """
        Load certificates and open every listener before privileges are
        dropped (port 80/443). Raises :class:`StartupError` if anything
        fails, so twistd exits non-zero instead of running half a daemon.
        """
        os.makedirs(self.config.state_dir, mode=0o700, exist_ok=True)
        try:
            fallback = load_or_create_fallback(
                self.config.state_dir, self.config.tls.fallback_cert, self.config.tls.fallback_key
            )
            static = load_static_certificates(self.config)
        except (CertificateError, ConfigError) as e:
            raise StartupError(str(e)) from None
        self.cache = CertificateCache(fallback)
        self._install_static(static)
        self._setup_issuance(self.config, None)
        self.tls_factory = TLSServerFactory(
            self.cache,
            self.builder,
            self.proxy_factory,
            self._reactor,
            alpn_for=self.proxy_factory.alpn_for,
            handshake_timeout=self.config.tls.handshake_timeout,
            gate=self.manager,
        )
        self.tls_factory.challenges = ChallengeResponder(self.alpn_keys.get, self._reactor)
        if self.config.listen.engine == "lean":
            self.lean = LeanEngine(self._reactor, self.tls_factory, self.proxy_factory)
        self.connection_limiter = self._make_limiter(self.config)
        limiter = self.connection_limiter
        self.listeners = {
            "tls": self._tls_listeners(limiter),
            "http": ListenerSet(self._reactor, "http", self.http_factory, limiter.listener("http")),
            "admin": ListenerSet(self._reactor, "admin", self.admin_factory, limiter.listener("admin")),
        }
        errors: list = []
        # Endpoints of the reactor listen synchronously (systemd: adopts).
        self._update_listeners(self.config).addCallback(errors.extend)
        if errors:
            raise StartupError("; ".join(str(e) for e in errors))
        if self.workers is not None:
            self.workers.start()
        super().privilegedStartService()

    def _tls_listeners(self, limiter: ConnectionLimiter) -> ListenerSet:
        """
        The TLS listener set: served here with ``workers: 1``, else opened
        here and served by the worker processes (:mod:`kongacme.workers`).
        """
        if self.config.workers == 1:
            return ListenerSet(self._reactor, "tls", self.tls_factory, limiter.listener("tls"), engine=self.lean)
        self.workers = WorkerMode(self, self._reactor)
        return self.workers.listeners

    def startService(self) -> None:
        if self.cache is None:
            self.privilegedStartService()
        super().startService()
        if self.manager is not None:
            self._load_stored(self.manager)
        if self.propagator is not None:
            self.propagator.start(initial_sync=False)
        tune_gc()
        self._report_tickets()
        self.log.info(
            "kongacme {version} started: {certs} static certificate name(s), {routes} route(s)",
            version=__version__,
            certs=len(self._static_names),
            routes=len(self.config.routes),
        )

    def _report_tickets(self) -> None:
        """
        Say how many TLS 1.3 session tickets a full handshake sends. On
        kongacme's own OpenSSL binding (every certificate's connections,
        where it is built) kongacme sets the count: one, or none with
        ``tls.session_tickets: false``. On pyOpenSSL the count is OpenSSL's
        (:func:`~kongacme.tls.tickets.pyopenssl_tickets`), set for the whole
        process by ``OPENSSL_CONF`` (``etc/openssl/*.cnf``): a warning when
        ``tls.session_tickets: false`` still sends tickets on connections
        that are all on pyOpenSSL.
        """
        if self.cache is None:
            return
        count = pyopenssl_tickets(self.cache.fallback)
        if count < 0:  # logged where it was counted
            return
        own = 1 if self.builder.session_tickets else 0
        std = self.builder.std
        conf = "OpenSSL's NumTickets: OPENSSL_CONF=etc/openssl/%s" % (
            "one-ticket.cnf sends one" if self.builder.session_tickets else "no-tickets.cnf sends none",
        )
        if std.binding == "openssl" and std.certificate_limit:
            # kongacme.tls.stdlib: every certificate from its first
            # connection on, unless the binding refused it; while
            # certificate_limit certificates are held, another is kept from
            # its promote_after-th connection, its connections before that
            # served on the binding (objects made per connection) or, where
            # pyOpenSSL sends as many tickets anyway, there.
            if count == own:
                held = "stays there too until it has had {promote} connections"
            else:
                held = ("is on the binding too until it has had {promote} connections, its leaf and key parsed for "
                        "each (~0.2-0.5 ms; with pyOpenSSL sending as many, they would stay there)")
            self.log.info(
                "TLS 1.3: {own} session ticket(s) per full handshake on kongacme's OpenSSL binding, {count} on "
                "pyOpenSSL ({conf}), where only a certificate the binding refuses stays; while {limit} certificates "
                "are held, another " + held,
                own=own, count=count, conf=conf, limit=std.certificate_limit, promote=std.promote_after,
            )
            return
        busy = "; a busy certificate's: %d" % (own,) if std.limit else ""
        if count and not self.builder.session_tickets:
            self.log.warn(
                "tls.session_tickets is false, yet a TLS 1.3 handshake on pyOpenSSL sends {count} session ticket(s) "
                "(stateful ones, which kongacme cannot resume): OpenSSL sends them unless its "
                "configuration says NumTickets = 0 (OPENSSL_CONF=etc/openssl/no-tickets.cnf){busy}",
                count=count,
                busy=busy,
            )
        else:
            self.log.info(
                "TLS 1.3: {count} session ticket(s) per full handshake on pyOpenSSL ({conf}){busy}",
                count=count,
                conf=conf,
                busy=busy,
            )

    @inlineCallbacks
    def stopService(self):
        if self._load_retry_call is not None and self._load_retry_call.active():
            self._load_retry_call.cancel()
        yield super().stopService()
        if self.propagator is not None:
            self.propagator.stop()
        for listener_set in self.listeners.values():
            yield listener_set.stop_all()
        if self.lean is not None:
            self.lean.stop()
        if self.connection_limiter is not None:
            self.connection_limiter.stop()
        if self.issuer is not None:
            yield self.issuer.close()
        yield self._close_storage()
        if self.log_observer is not None:
            # Lines suppressed by the rate limiter are counted now, not lost.
            self.log_observer.limiter.stop()

    def _close_storage(self) -> Deferred:
        """Close the current storage's connections (networked providers)."""
        from twisted.internet.defer import maybeDeferred, succeed

        close = getattr(self.storage, "close", None)
        if close is None:
            return succeed(None)
        return maybeDeferred(close).addErrback(lambda f: self.log.failure("closing storage failed", f))

    # -- issuance -----------------------------------------------------------

    def _setup_issuance(self, new: DaemonConfig, old: DaemonConfig | None) -> None:
        """
        Build (or rebuild on reload) storage, issuer and manager for the
        ``acme`` section. Orders already running finish with what they had.
        """
        assert self.cache is not None
        acme = new.acme
        if acme is None:
            if self.manager is not None:
                self.log.info("acme section removed: no more certificate issuance")
            self._close_storage()
            if self.propagator is not None:
                self.propagator.stop()
                self.propagator = None
            self._setup_renewal(new)
            self.manager = self.issuer = self.storage = None
            self.token_store.target = MemoryChallengeTokenStore(self._reactor)
            self.alpn_keys.storage = None
            return
        old_acme = old.acme if old is not None else None
        storage_changed = (
            old_acme is None
            or (acme.storage, acme.storage_config) != (old_acme.storage, old_acme.storage_config)
            or new.state_dir != old.state_dir
            or new.storage_encryption != old.storage_encryption
        )
        if storage_changed or self.storage is None:
            self._close_storage()
            # Failures are counted for /metrics (the counter outlives reloads).
            self.storage = instrument(
                storage_from_config(acme, new.state_dir, self._reactor, new.storage_encryption), self.storage_errors
            )
            self.token_store.target = StorageChallengeTokenStore(self.storage)
            self.alpn_keys.storage = self.storage
        if storage_changed or self.issuer is None or acme != old_acme or new.issuance != old.issuance:
            if self.issuer is not None:
                self.issuer.close()
            self.issuer = make_issuer(
                acme, new.issuance, self.storage, self.token_store, self._reactor, previous=self.issuer,
                alpn_keys=self.alpn_keys,
            )
        admission = Admission(acme.domains, acme.allow_any_domain, wildcard=new.issuance.wildcard)
        issuance = new.issuance
        if new.fleet.role == "control_plane" and issuance.on_demand:
            # A control plane orders on Admin API requests (and renews);
            # handshakes reach the data planes.
            issuance = attrs.evolve(issuance, on_demand=False)
        if self.manager is None or storage_changed:
            if self.manager is not None:
                self.manager.health.stop()
            self.manager = CertificateManager(
                self.cache,
                self.storage,
                self.issuer,
                self._reactor,
                admission,
                issuance,
                fail_backoff_minutes=acme.fail_backoff_minutes,
                # Stable per node and state_dir: a restart takes over the
                # order locks its previous run left.
                lock_owner=node_owner(new.state_dir),
            )
            if old is not None:
                self._load_stored(self.manager)
        else:
            self.manager.reconfigure(self.issuer, admission, issuance, acme.fail_backoff_minutes)
        if self.tls_factory is not None:
            self.tls_factory.gate = self.manager
        self.acme_admin.challenge_port = new.issuance.challenge_port
        self._setup_propagation(new, storage_changed)
        self._setup_renewal(new)

    def managed_certificates(self) -> dict[str, CertifiedKey]:
        """``{host: certificate}`` for every ACME-managed name in the cache."""
        if self.cache is None:
            return {}
        static = self._static_names
        found = {}
        for name in self.cache.names():
            if name in static:
                continue
            certified = self.cache.get(name)
            # A wildcard certificate's base name is renewed under the
            # wildcard's name (one entry in storage, one order).
            if certified is not None and self.cache.get("*." + name) is not certified:
                found[name] = certified
        return found

    def _setup_renewal(self, new: DaemonConfig) -> None:
        """Start, reconfigure or stop the renewal service to match ``new``."""
        if new.acme is None or self.manager is None:
            if self.renewal is not None:
                self.renewal.disownServiceParent()
                self.renewal = None
            return
        acme = new.acme
        renewal_info = (lambda certified: self.issuer.renewal_info(certified)) if new.renewal.ari else None
        ari_id = DaemonAcmeIssuer.ari_id if new.renewal.ari else None
        admits = self.manager.admission.admits
        limit = new.renewal.max_parallel
        if self.renewal is not None and self.renewal.manager is self.manager:
            self.renewal.reconfigure(admits, new.renewal, acme.renew_threshold_days, renewal_info, ari_id, limit)
            return
        if self.renewal is not None:
            self.renewal.disownServiceParent()
        self.renewal = RenewalService(
            self.manager,
            self.managed_certificates,
            admits,
            self._reactor,
            new.renewal,
            acme.renew_threshold_days,
            renewal_info=renewal_info,
            ari_id=ari_id,
            max_parallel=limit,
        )
        self.renewal.setServiceParent(self)

    def _setup_propagation(self, new: DaemonConfig, storage_changed: bool) -> None:
        """Share certificates with other nodes when the storage is shared (not shm)."""
        assert self.manager is not None and self.cache is not None
        shared = new.acme is not None and new.acme.storage != "shm"
        if self.propagator is not None and (storage_changed or not shared):
            self.propagator.stop()
            self.propagator = None
        if shared and self.propagator is None:
            from kongacme.fleet.feed import change_feed_for

            # Redis adds pub/sub (milliseconds); the others poll only.
            self.propagator = Propagator(
                self.storage,
                self.cache,
                self._reactor,
                new.fleet.poll_interval,
                new.fleet.full_sync_interval,
                feed=change_feed_for(self.storage, self._reactor),
            )
            if self.running:
                self.propagator.start(initial_sync=False)
        if self.propagator is not None:
            self.manager.on_stored = self.propagator.announce
        else:
            self.manager.on_stored = None

    #: Seconds between attempts to load the stored certificates while
    #: storage does not answer at start.
    load_retry = 5.0

    def _load_stored(self, manager: CertificateManager, attempt: int = 1) -> None:
        """
        Load every stored certificate into the cache; while storage does
        not answer, try again every :attr:`load_retry` seconds (one error
        line, one line when it worked) until it does or the manager is
        replaced by a reload.
        """
        from kongacme.storage.errors import StorageError

        def loaded(count: int) -> None:
            self.log.info("{count} certificate(s) loaded from storage", count=count)

        def failed(failure) -> None:
            if not failure.check(StorageError):
                self.log.failure("could not load certificates from storage", failure)
                return
            if attempt == 1:
                self.log.error(
                    "could not load certificates from storage ({error}); retrying every {delay:.0f} s",
                    error=failure.getErrorMessage(), delay=self.load_retry,
                )
            if self.manager is manager and self.running:
                self._load_retry_call = self._reactor.callLater(
                    self.load_retry, self._load_stored, manager, attempt + 1
                )

        manager.load_from_storage().addCallbacks(loaded, failed)

    # -- configuration ------------------------------------------------------

    def _install_static(self, static: list[tuple[tuple[str, ...], CertifiedKey]]) -> None:
        assert self.cache is not None
        wanted: set[str] = set()
        for names, certified in static:
            self.cache.put(certified, names)
            wanted.update(names)
        for stale in self._static_names - wanted:
            self.cache.remove(stale)
        self._static_names = wanted

    def reload(self) -> Deferred:
        """
        Reopen the log file (logrotate moved it), then re-read the
        configuration file and apply it. An invalid file is logged with its
        reasons and the running configuration stays.

        :return: ``Deferred`` firing with ``True`` if applied, else ``False``.
        """
        self._reopen_log()
        self.log.info("reloading configuration from {path}", path=self.config_path)
        try:
            new = load_config(self.config_path)
        except ConfigError as e:
            return self._reject(str(e))
        return self.apply(new)

    def _reopen_log(self) -> None:
        """Reopen the log file; one that cannot be opened keeps the old one."""
        if self.log_observer is None:
            return
        try:
            self.log_observer.reopen()
        except OSError as e:
            self.log.error(
                "could not reopen the log file {path}, still writing to the old one: {error}",
                path=self.log_observer.file,
                error=e,
            )

    def _reconfigure_log(self, new: DaemonConfig) -> None:
        """Apply the ``logging`` section; a file that cannot be opened keeps the old settings."""
        logging = new.logging
        observer = self.log_observer
        if observer is None or (logging.level, logging.format, logging.file) == (
            observer.level,
            observer.format,
            observer.file,
        ):
            return
        try:
            observer.reconfigure(logging.level, logging.format, logging.file)
        except OSError as e:
            self.log.error(
                "logging.file: cannot open {path}: {error}; logging keeps its previous settings",
                path=logging.file,
                error=e,
            )

    def _reject(self, reason: str) -> Deferred:
        from twisted.internet.defer import succeed

        self.last_reload_error = reason
        self.log.error(
            "configuration reload rejected, keeping the running configuration:\n{reason}", reason=reason
        )
        return succeed(False)

    @inlineCallbacks
    def apply(self, new: DaemonConfig):
        """
        Apply ``new`` to the running daemon: routes, certificates, TLS
        settings, HTTP settings and listeners. Connections in flight keep
        their upstream and certificate.
        """
        refusal = reload_refusal(self.config, new)
        if refusal is not None:
            result = yield self._reject(refusal)
            return result
        try:
            static = load_static_certificates(new)
            fallback = None
            if (new.tls.fallback_cert, new.tls.fallback_key) != (
                self.config.tls.fallback_cert,
                self.config.tls.fallback_key,
            ) or new.state_dir != self.config.state_dir:
                os.makedirs(new.state_dir, mode=0o700, exist_ok=True)
                fallback = load_or_create_fallback(new.state_dir, new.tls.fallback_cert, new.tls.fallback_key)
        except (CertificateError, ConfigError, OSError) as e:
            result = yield self._reject(str(e))
            return result
        # New endpoints are opened beside the old ones before anything
        # changes: one that cannot be opened (a port already taken) rejects
        # the reload, and the daemon keeps every listener it had.
        listen_errors = yield self._update_listeners(new)
        if listen_errors:
            result = yield self._reject("; ".join(str(e) for e in listen_errors))
            return result
        for warning in getattr(new, "warnings", ()):
            self.log.warn("configuration: {warning}", warning=warning)
        old = self.config
        self.config = new
        self._reconfigure_log(new)
        self.router = RouteTable.from_config(new.routes, new.default_route)
        self.proxy_factory.router = self.router
        self.proxy_factory.connect_timeout = new.proxy.connect_timeout
        self.proxy_factory.idle_timeout = new.proxy.idle_timeout
        if (new.tls.session_tickets, new.tls.ticket_key_rotation) != (
            old.tls.session_tickets,
            old.tls.ticket_key_rotation,
        ):
            self.builder.session_tickets = new.tls.session_tickets
            self.builder.ticket_key_rotation = new.tls.ticket_key_rotation
            self.builder.forget_all()
            if new.tls.session_tickets != old.tls.session_tickets:
                self._report_tickets()
        if self.cache is not None:
            if fallback is not None:
                self.cache.fallback = fallback
                self.log.info("fallback certificate changed ({source})", source=fallback.source)
            self._install_static(static)
        if self.cache is not None:
            try:
                self._setup_issuance(new, old)
            except Exception:
                self.log.failure("could not apply the acme section; issuance keeps its previous settings")
        if self.tls_factory is not None:
            self.tls_factory.handshake_timeout = new.tls.handshake_timeout
        if new.listen.engine != old.listen.engine:
            self.log.warn(
                "listen.engine changed to {engine}: the TLS listeners keep their engine; it applies "
                "after a restart (and to worker processes started from now on)",
                engine=new.listen.engine,
            )
        self._update_http_settings(new)
        self._update_admin_settings(new)
        if self.connection_limiter is not None:
            self.connection_limiter.reconfigure(self._budget(new))
        if self.workers is not None:
            self.workers.reconfigure(new)
        self.reloads += 1
        self.last_reload_error = None
        self.log.info(
            "configuration reloaded: {routes} route(s), {certs} static certificate name(s)",
            routes=len(new.routes),
            certs=len(self._static_names),
        )
        return True

    # -- listeners and connection limits -------------------------------------

    def _update_listeners(self, new: DaemonConfig) -> Deferred:
        """
        Move every listener set to ``new.listen``: all new endpoints open
        first, and if one fails none of the changes happen.

        :return: ``Deferred`` firing with the list of
            :class:`kongacme.listeners.ListenError` (empty: done).
        """
        return update_listeners([(ls, getattr(new.listen, kind)) for kind, ls in self.listeners.items()])

    def _budget(self, config: DaemonConfig):
        """The connection limits of ``config`` under this process's open-file limit."""
        assert self._nofile is not None
        return derive_budget(config.limits, self._nofile, http_proxies=config.http.mode == "proxy")

    def _make_limiter(self, config: DaemonConfig) -> ConnectionLimiter:
        """
        Read (and raise, with ``limits.raise_nofile``) the open-file limit,
        then build the connection limiter from ``config.limits``.
        """
        before, self._nofile = open_file_limit(config.limits.raise_nofile)
        if self._nofile != before:
            self.log.info(
                "open-file limit raised from {before} to {now} (limits.raise_nofile)", before=before, now=self._nofile
            )
        budget = self._budget(config)
        self.log.info("connection limits: {limits}", limits=budget.describe())
        return ConnectionLimiter(self._reactor, budget)

    def _update_http_settings(self, new: DaemonConfig) -> None:
        self.http_factory.reconfigure(
            mode=new.http.mode,
            https_port=new.http.https_port,
            max_header_bytes=new.http.max_header_bytes,
            request_timeout=new.http.request_timeout,
        )

    def _update_admin_settings(self, new: DaemonConfig) -> None:
        self.admin_factory.resource.set_token(new.admin.token)
        self.admin_factory.reconfigure(
            request_timeout=new.admin.request_timeout, max_header_bytes=new.admin.max_header_bytes
        )

    # -- introspection ------------------------------------------------------

    def status(self) -> dict:
        """What ``GET /status`` on the Admin listener answers."""
        return {
            "version": __version__,
            "config": self.config_path,
            "certificates": sorted(self.cache.names()) if self.cache is not None else [],
            "fallback": self.cache.fallback.source if self.cache is not None else None,
            "routes": len(self.config.routes),
            "listeners": {kind: ls.descriptions for kind, ls in self.listeners.items()},
            "reloads": self.reloads,
            "last_reload_error": self.last_reload_error,
            "issuance": self.manager.status() if self.manager is not None else None,
            "workers": None if self.workers is None else self.workers.status(),
            "renewal": None if self.renewal is None else {
                "passes": self.renewal.passes,
                "last_pass": self.renewal.last_pass,
            },
        }
