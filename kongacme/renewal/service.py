"""
The renewal service: checks every managed certificate soon after start and
then every ``renewal.check_interval``, renews what is due (one node per
certificate in a fleet, through the manager's order lock), retries
failures with backoff until they succeed, and logs louder as expiry nears.
"""

from __future__ import annotations

import random
from typing import Any, Callable, Mapping, Optional

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredSemaphore, fail, gatherResults, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from kongacme.errors import AcmeTransportError, OrderInProgress, StoragePaused
from kongacme.renewal.schedule import DAY, due_time, pick_in_window, retry_delay, severity
from kongacme.renewal.state import RenewalState, iso
from kongacme.tls.certs import CertifiedKey, issuer_label

#: Seconds between two passes at least (a burst of due times, or a clock
#: jump, never turns the service into a busy loop).
MIN_PASS_GAP = 1.0
#: Seconds before asking the CA for an ARI window again after it failed.
ARI_ERROR_RETRY = 3600.0
#: Hosts looked at per reactor turn in a pass: reading a new
#: certificate's dates costs ~20 µs, so a first pass over 10,000 gives the
#: reactor a turn every ~5 ms instead of holding it for 0.4 s.
CHUNK = 250


#: Stands for an ARI request not made (the answer is known from another).
_SKIPPED = object()


class _Tracked:
    """Internal bookkeeping for one host beside its public state."""

    __slots__ = ("state", "certified", "admission_checked", "ari_next_fetch", "ari_pick", "retry_after", "ari_id")

    def __init__(self, host: str):
        self.state = RenewalState(host)
        #: The certificate the state describes (compared by identity: a
        #: renewed or propagated certificate is a new object).
        self.certified: Optional[CertifiedKey] = None
        #: Whether ``state.admitted`` is current (reset on reload).
        self.admission_checked = False
        self.ari_next_fetch = 0.0
        self.ari_pick: Optional[float] = None
        self.retry_after: Optional[float] = None
        self.ari_id: Optional[str] = None


class RenewalService(Service):
    """
    Renews the certificates the daemon manages.

    :param manager: the :class:`~kongacme.issuance.manager.CertificateManager`
        (its ``renew`` takes the fleet-wide order lock).
    :param managed: returns ``{host: CertifiedKey}`` of every ACME-managed
        certificate this node holds (static certificates excluded).
    :param admits: whether the config still admits a host.
    :param clock: timers and "now".
    :param settings: the ``renewal`` config section
        (:class:`~kongacme.config.daemon.RenewalConfig`).
    :param threshold_days: Kong's ``renew_threshold_days``.
    :param renewal_info: ``CertifiedKey -> Deferred`` firing with an
        :class:`~kongacme.acme.ari.RenewalWindow` or ``None`` (the CA has no
        ARI); ``None`` disables ARI.
    :param ari_id: ``CertifiedKey -> str`` (the ``replaces`` value), used
        when ARI is on.
    :param max_parallel: renewals running at once in a pass.
    :param rng: randomness for jitter and ARI picks.
    """

    log = Logger()
    name = "renewal"

    def __init__(
        self,
        manager: Any,
        managed: Callable[[], Mapping[str, CertifiedKey]],
        admits: Callable[[str], bool],
        clock: IReactorTime,
        settings: Any,
        threshold_days: float,
        renewal_info: Optional[Callable[[CertifiedKey], Deferred]] = None,
        ari_id: Optional[Callable[[CertifiedKey], str]] = None,
        max_parallel: int = 10,
        rng: Optional[random.Random] = None,
    ):
        self.manager = manager
        self._managed = managed
        self.admits = admits
        self.clock = clock
        self.settings = settings
        self.threshold_days = threshold_days
        self._renewal_info = renewal_info
        self._ari_id = ari_id
        self.max_parallel = max_parallel
        self._rng = rng or random.Random()
        self._tracked: dict[str, _Tracked] = {}
        self._timer: Optional[IDelayedCall] = None
        self._pass: Optional[Deferred] = None
        self._in_progress: dict[str, Deferred] = {}
        self.passes = 0
        self.last_pass: Optional[dict] = None

    def reconfigure(
        self,
        admits: Callable[[str], bool],
        settings: Any,
        threshold_days: float,
        renewal_info: Optional[Callable[[CertifiedKey], Deferred]],
        ari_id: Optional[Callable[[CertifiedKey], str]],
        max_parallel: int,
    ) -> None:
        """Apply reloaded settings from the next pass on (scheduled anew)."""
        self.admits = admits
        self.threshold_days = threshold_days
        for tracked in self._tracked.values():
            tracked.admission_checked = False  # checked (and re-planned) on the next look
        self._renewal_info = renewal_info
        self._ari_id = ari_id
        self.max_parallel = max_parallel
        interval_changed = settings.check_interval != self.settings.check_interval
        self.settings = settings
        if interval_changed and self.running:
            self._schedule(self.clock.seconds() + MIN_PASS_GAP)

    # -- service --------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._schedule(self.clock.seconds() + self.settings.first_check)

    def stopService(self) -> Any:
        super().stopService()
        self._cancel_timer()
        return None

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _schedule(self, when: float) -> None:
        self._cancel_timer()
        delay = max(0.0, when - self.clock.seconds())
        self._timer = self.clock.callLater(delay, self._timed_pass)

    def _timed_pass(self) -> None:
        self._timer = None
        self.run_pass()

    # -- what the Admin API, metrics and status page read ---------------------

    def states(self) -> list[RenewalState]:
        """Every managed host's state, sorted by host."""
        self._refresh(self.clock.seconds())
        return [self._reported(self._tracked[host]) for host in sorted(self._tracked)]

    def state(self, host: str) -> Optional[RenewalState]:
        """One host's state, or ``None`` when it is not managed."""
        self._refresh(self.clock.seconds())
        tracked = self._tracked.get(host.lower())
        return None if tracked is None else self._reported(tracked)

    @staticmethod
    def _reported(tracked: "_Tracked") -> RenewalState:
        state = tracked.state
        if state.issuer is None and tracked.certified is not None:
            state.issuer = issuer_label(tracked.certified.leaf)
        return state

    def forget(self, host: str) -> None:
        """Stop tracking ``host`` (its certificate was deleted)."""
        self._tracked.pop(host.lower(), None)

    # -- passes ----------------------------------------------------------------

    def renew_all(self) -> Deferred:
        """
        Run a pass now (``PATCH /acme``): renew every certificate that is
        due. Fires with ``{"checked", "renewed", "failed", "skipped"}``.
        """
        return self.run_pass()

    def renew(self, host: str) -> Deferred:
        """
        Renew ``host`` now whether or not it is due (the operator asked).

        :return: ``Deferred`` firing with the new certificate, failing
            with :class:`KeyError` when the host is not managed or with the
            order's error.
        """
        host = host.lower()
        self._refresh(self.clock.seconds())
        tracked = self._tracked.get(host)
        if tracked is None:
            return fail(KeyError(host))
        return self._renew_one(tracked, forced=True)

    def run_pass(self) -> Deferred:
        """
        Look at every managed certificate and renew the due ones; the next
        pass is scheduled when this one ends. Never fails: every error is
        logged and kept in the host's state.
        """
        if self._pass is not None:
            # One pass at a time; a second request joins the running one.
            joined: Deferred = Deferred()
            self._pass.addBoth(lambda r: (joined.callback(r), r)[1])
            return joined
        self._pass = Deferred.fromCoroutine(self._run_pass())

        def ended(result: Any) -> Any:
            self._pass = None
            if isinstance(result, Failure):
                self.log.failure("renewal pass crashed; the next one runs as scheduled", result)
                result = {"checked": 0, "renewed": [], "failed": {}, "skipped": {}, "error": result.getErrorMessage()}
            self.last_pass = result
            if self.running:
                self._schedule(self._next_pass_time())
            return result

        return self._pass.addBoth(ended)

    async def _run_pass(self) -> dict:
        self.passes += 1
        now = self.clock.seconds()
        for _ in self._refreshing(self._managed()):
            await self._turn()
        if self._renewal_info is not None:
            await self._fetch_ari(now)
        due = []
        checked = 0
        for tracked in self._tracked.values():
            checked += 1
            state = tracked.state
            if state.admitted and state.next_attempt is not None and state.next_attempt <= now:
                due.append(tracked)
        due.sort(key=lambda t: t.state.host)
        renewed: list[str] = []
        failed: dict[str, str] = {}
        skipped: dict[str, str] = {}
        if due:
            self.log.info("renewal pass: {due} of {checked} certificate(s) due", due=len(due), checked=checked)
            semaphore = DeferredSemaphore(max(1, self.max_parallel))

            def one(tracked: _Tracked) -> Deferred:
                d = semaphore.run(self._renew_one, tracked, False)

                def done(result: Any) -> None:
                    host = tracked.state.host
                    if isinstance(result, Failure):
                        if result.check(OrderInProgress, StoragePaused):
                            skipped[host] = result.value.message
                        else:
                            failed[host] = tracked.state.last_error or result.getErrorMessage()
                    else:
                        renewed.append(host)

                return d.addBoth(done)

            await gatherResults([one(t) for t in due])
        else:
            self.log.debug("renewal pass: none of {checked} certificate(s) due", checked=checked)
        return {"checked": checked, "renewed": sorted(renewed), "failed": failed, "skipped": skipped}

    def _turn(self) -> Deferred:
        """Let the reactor run (other connections) before going on."""
        d: Deferred = Deferred()
        self.clock.callLater(0, d.callback, None)
        return d

    def _next_pass_time(self) -> float:
        """The sooner of the regular interval and the next due attempt."""
        now = self.clock.seconds()
        when = now + self.settings.check_interval
        for tracked in self._tracked.values():
            state = tracked.state
            if state.admitted and state.next_attempt is not None and state.next_attempt < when:
                when = state.next_attempt
            if self._renewal_info is not None and tracked.ari_next_fetch < when:
                when = tracked.ari_next_fetch
        return max(when, now + MIN_PASS_GAP)

    # -- per host --------------------------------------------------------------

    def _refresh(self, now: float) -> None:
        """Bring the tracked set in line with the managed certificates (all at once)."""
        for _ in self._refreshing(self._managed()):
            pass

    def _refreshing(self, managed: Mapping[str, CertifiedKey]):
        """
        :meth:`_refresh` as a generator yielding every :data:`CHUNK` hosts,
        so a pass can give the reactor a turn in between. Unchanged hosts
        cost an identity check: a pass over 10,000 certificates where none
        is due takes milliseconds (``bench/renewal.py``).
        """
        tracked_hosts = self._tracked
        for host in [h for h in tracked_hosts if h not in managed]:
            del tracked_hosts[host]
        for count, (host, certified) in enumerate(managed.items(), 1):
            tracked = tracked_hosts.get(host)
            if tracked is None:
                tracked = tracked_hosts[host] = _Tracked(host)
            if tracked.certified is not certified:
                self._adopt(tracked, certified)
                if tracked.admission_checked:
                    self._plan(tracked)
            if not tracked.admission_checked:
                self._check_admission(tracked)  # plans too
            if count % CHUNK == 0:
                yield

    def _check_admission(self, tracked: _Tracked) -> None:
        state = tracked.state
        tracked.admission_checked = True
        admitted = self.admits(state.host)
        if admitted != state.admitted:
            state.admitted = admitted
            if not admitted:
                self.log.info(
                    "{host} is no longer admitted by the config: its certificate (valid until {not_after}) "
                    "is kept but not renewed", host=state.host, not_after=iso(state.not_after),
                )
        self._plan(tracked)

    def _adopt(self, tracked: _Tracked, certified: CertifiedKey) -> None:
        """A new certificate for the host (first sight, or renewed anywhere)."""
        state = tracked.state
        tracked.certified = certified
        state.not_before = certified.not_before.timestamp()
        state.not_after = certified.not_after.timestamp()
        state.issuer = None  # read when reported (display only)
        state.failures = 0
        state.last_error = None
        state.ari_window = None
        tracked.ari_pick = None
        tracked.ari_next_fetch = 0.0
        tracked.retry_after = None
        tracked.ari_id = None

    def _plan(self, tracked: _Tracked) -> None:
        """Compute ``due_at`` / ``next_attempt`` from the rules and backoff."""
        state = tracked.state
        assert state.not_before is not None and state.not_after is not None
        due_at, rule = due_time(state.not_before, state.not_after, self.threshold_days)
        if tracked.ari_pick is not None and tracked.ari_pick < due_at:
            due_at, rule = tracked.ari_pick, "ari"
        state.due_at, state.rule = due_at, rule
        if not state.admitted:
            state.next_attempt = None
        elif tracked.retry_after is not None:
            state.next_attempt = max(due_at, tracked.retry_after)
        else:
            state.next_attempt = due_at

    def _renew_one(self, tracked: _Tracked, forced: bool) -> Deferred:
        host = tracked.state.host
        running = self._in_progress.get(host)
        if running is not None:
            joined: Deferred = Deferred()
            running.addBoth(lambda r: (joined.errback(r) if isinstance(r, Failure) else joined.callback(r), r)[1])
            return joined
        current = tracked.certified
        if current is None:
            return fail(KeyError(host))
        state = tracked.state
        state.last_attempt = self.clock.seconds()
        replaces = None
        if self._ari_id is not None and self._renewal_info is not None and state.ari_window is not None:
            try:
                replaces = self._ari_id(current)
            except ValueError:
                replaces = None
        self.log.info(
            "renewing the certificate for {host} ({why}; valid until {not_after})",
            host=host, why="requested" if forced else state.rule, not_after=iso(state.not_after),
        )
        try:
            d = self.manager.renew(
                host,
                current,
                reuse_key=self.settings.reuse_key,
                replaces=replaces,
                still_due=self._still_due,
            )
        except Exception:
            d = fail()
        self._in_progress[host] = d

        def succeeded(certified: CertifiedKey) -> CertifiedKey:
            self._in_progress.pop(host, None)
            state.last_success = self.clock.seconds()
            self._adopt(tracked, certified)
            self._plan(tracked)
            self.log.info("certificate for {host} renewed, valid until {not_after}", host=host,
                          not_after=iso(state.not_after))
            return certified

        def failed(failure: Failure) -> Failure:
            self._in_progress.pop(host, None)
            self._record_failure(tracked, failure)
            return failure

        return d.addCallbacks(succeeded, failed)

    def _still_due(self, certified: CertifiedKey) -> bool:
        """Whether ``certified`` (maybe stored by another node) is due."""
        due_at, _ = due_time(certified.not_before.timestamp(), certified.not_after.timestamp(), self.threshold_days)
        return due_at <= self.clock.seconds()

    def _record_failure(self, tracked: _Tracked, failure: Failure) -> None:
        state = tracked.state
        now = self.clock.seconds()
        message = getattr(failure.value, "message", None) or "%s: %s" % (
            failure.type.__name__,
            failure.getErrorMessage(),
        )
        if failure.check(OrderInProgress):
            # Another node holds the lock and is renewing: not a failure;
            # look again soon and take its certificate.
            tracked.retry_after = now + 30.0
            state.next_attempt = tracked.retry_after
            self.log.info("{host}: {message}; checking again in 30 s", host=state.host, message=message)
            return
        state.failures += 1
        state.last_error = message
        seconds_left = (state.not_after or now) - now
        delay = retry_delay(
            state.failures,
            self.settings.backoff_initial,
            self.settings.backoff_max,
            seconds_left,
            self._rng,
            getattr(failure.value, "retry_after", None),
        )
        tracked.retry_after = now + delay
        state.next_attempt = tracked.retry_after
        level = severity(seconds_left, self.threshold_days, self.settings.critical_days)
        emit = getattr(self.log, level)
        emit(
            "renewal of the certificate for {host} failed ({failures} in a row; {days_left:.1f} days left, "
            "valid until {not_after}): {error}; next attempt in {delay:.0f} s",
            host=state.host,
            failures=state.failures,
            days_left=seconds_left / DAY,
            not_after=iso(state.not_after),
            error=message,
            delay=delay,
        )

    # -- ARI ------------------------------------------------------------------

    async def _fetch_ari(self, now: float) -> None:
        """Refresh the ARI windows that are due for a refresh."""
        assert self._renewal_info is not None
        wanted = [
            t for t in self._tracked.values()
            if t.state.admitted and t.ari_next_fetch <= now and (t.state.not_after or 0) > now
        ]
        if not wanted:
            return
        semaphore = DeferredSemaphore(max(1, self.max_parallel))
        current = self._managed()
        errors: list[str] = []
        # What every certificate would get once one answer shows it: the CA
        # has no ARI (None), or cannot be reached (an AcmeTransportError).
        # The rest are not asked then: 10,000 requests to a CA that is down
        # would hold the pass for as many timeouts.
        verdict: list[Any] = []

        def ask(certified: CertifiedKey) -> Deferred:
            if verdict:
                return succeed(_SKIPPED)
            return self._renewal_info(certified)

        def answered(window: Any, tracked: _Tracked) -> None:
            if window is None:
                verdict.append(None)
            elif window is _SKIPPED:
                if verdict[0] is None:
                    self._apply_window(tracked, None)
                else:
                    self._window_failed(tracked, verdict[0], errors)
                return
            self._apply_window(tracked, window)

        def failed(failure: Failure, tracked: _Tracked) -> None:
            if failure.check(AcmeTransportError) and not verdict:
                verdict.append(failure)
            self._window_failed(tracked, failure, errors)

        def fetch(tracked: _Tracked) -> Deferred:
            certified = current.get(tracked.state.host)
            if certified is None:
                return succeed(None)
            d = semaphore.run(ask, certified)
            return d.addCallbacks(answered, failed, callbackArgs=(tracked,), errbackArgs=(tracked,))

        await gatherResults([fetch(t) for t in wanted])
        if errors:
            # One line per pass, not one per certificate (the CA being down
            # would otherwise log thousands).
            self.log.warn(
                "could not fetch the CA's renewal window (ARI) for {count} certificate(s): {error}; keeping the "
                "threshold rule for them, retrying in {retry:.0f} s",
                count=len(errors), error=errors[0], retry=ARI_ERROR_RETRY,
            )

    def _apply_window(self, tracked: _Tracked, window: Any) -> None:
        now = self.clock.seconds()
        if window is None:
            # The CA offers no ARI (e.g. Pebble 2.4): ask again a day later.
            tracked.ari_next_fetch = now + DAY
            return
        new = (window.start, window.end)
        if tracked.state.ari_window != new:
            tracked.state.ari_window = new
            tracked.ari_pick = pick_in_window(window.start, window.end, self._rng)
            if window.explanation_url:
                self.log.info(
                    "the CA suggests renewing {host} between {start} and {end}: {url}",
                    host=tracked.state.host, start=iso(window.start), end=iso(window.end),
                    url=window.explanation_url,
                )
        tracked.ari_next_fetch = now + window.retry_after
        self._plan(tracked)

    def _window_failed(self, tracked: _Tracked, failure: Failure, errors: list[str]) -> None:
        tracked.ari_next_fetch = self.clock.seconds() + ARI_ERROR_RETRY
        errors.append("%s: %s" % (tracked.state.host, failure.getErrorMessage()))
