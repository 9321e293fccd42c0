"""
Prometheus metrics for ``GET /metrics``: one collector that reads the
daemon's live state at scrape time (certificates, renewal state, the
manager's counters, handshake outcomes, storage errors) instead of counters
updated all over the code. Each daemon registers it in its own
``CollectorRegistry``, so several daemons in one process do not clash.
"""

from __future__ import annotations

import bisect
import collections
from typing import Any, Iterable, Iterator, Mapping

import attrs
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from twisted.internet.interfaces import IReactorTime

from kongacme.engine.lean import ENGINE_PATHS
from kongacme.validators import provides
from kongacme.renewal.state import RenewalState
from kongacme.tls.certs import issuer_label
from kongacme.tls.protocol import HANDSHAKE_OUTCOMES

#: ``reason`` label values of ``kongacme_orders_failed_total``: what the
#: manager counts as ``stats["orders_failed:<reason>"]`` (its
#: ``failure_reason``). Failures counted without a reason are ``other``.
ORDER_FAILURE_REASONS = ("backoff", "not_admitted", "in_progress", "storage", "ca_problem", "ca_unreachable", "other")

#: Per-host series at most for this many managed certificates, unless
#: ``admin.metrics_host_limit`` says otherwise.
PER_HOST_SERIES_LIMIT = 10_000

#: ``within`` label values of ``kongacme_certificates_expiring``, seconds.
EXPIRY_PERIODS = (("expired", 0.0), ("1d", 86400.0), ("7d", 7 * 86400.0), ("14d", 14 * 86400.0), ("30d", 30 * 86400.0))

#: ``result`` label values of ``kongacme_handshakes_held_total``: how a
#: handshake held for an on-demand order ended (the manager's
#: ``stats["handshake_held_<result>"]``).
HELD_RESULTS = ("issued", "failed", "timeout")

#: ``reason`` label values of ``kongacme_handshake_orders_refused_total``:
#: why a handshake for a name without a certificate started no order (the
#: manager's ``stats["handshake_<reason>"]``).
REFUSAL_REASONS = ("backoff", "rate_limited", "storage_paused")

#: ``operation`` label values always present in
#: ``kongacme_storage_errors_total``.
STORAGE_OPERATIONS = ("get", "set", "add", "delete", "list", "compare_and_set", "compare_and_delete")


def managed_states(daemon: Any) -> list[RenewalState]:
    """
    What the daemon manages, sorted by host: the renewal service's
    :class:`RenewalState` list, or, while no renewal service runs, one
    state per name in the certificate cache (issuer and expiry from the
    certificate, ``admitted`` and ``last_error`` from the manager).

    :param daemon: a :class:`kongacme.service.DaemonService` (attributes
        ``renewal``, ``cache``, ``manager``; any may be ``None``).
    """
    renewal = getattr(daemon, "renewal", None)
    if renewal is not None:
        return sorted(renewal.states(), key=lambda state: state.host)
    cache = getattr(daemon, "cache", None)
    if cache is None:
        return []
    manager = getattr(daemon, "manager", None)
    states = []
    for name in sorted(cache.names()):
        certified = cache.get(name)
        if certified is None:
            continue
        states.append(
            RenewalState(
                host=name,
                not_before=certified.not_before.timestamp(),
                not_after=certified.not_after.timestamp(),
                issuer=issuer_label(certified.leaf),
                admitted=manager is not None and manager.admission.admits(name),
                last_error=None if manager is None else manager.last_error.get(name),
            )
        )
    return states


def _labelled(
    family: CounterMetricFamily | GaugeMetricFamily, values: Mapping[str, float], always: Iterable[str]
) -> CounterMetricFamily | GaugeMetricFamily:
    for label in sorted(set(always) | set(values)):
        family.add_metric([label], values.get(label, 0))
    return family


def _prefixed(stats: Mapping[str, int], prefix: str) -> dict[str, int]:
    return {key[len(prefix):]: value for key, value in stats.items() if key.startswith(prefix)}


@attrs.define(eq=False)  # hashable: the registry keys on it
class DaemonCollector(Collector):
    """
    A Prometheus collector over one daemon's live state, read at each
    scrape.

    :ivar _daemon: the :class:`kongacme.service.DaemonService` (read
        through ``renewal``, ``cache``, ``manager``, ``tls_factory``,
        ``storage_errors`` / ``storage`` and ``connection_limiter``; any may
        be missing or ``None``).
    :ivar _clock: "now", for the seconds until expiry.
    """

    _daemon: Any
    _clock: IReactorTime = attrs.field(validator=provides(IReactorTime))

    def describe(self) -> list[Metric]:
        # Registration asks for the names a collector exports (to refuse
        # duplicates); they depend on live state, so none are declared.
        return []

    def collect(self) -> Iterator[Metric]:
        """The metrics, as of now."""
        now = self._clock.seconds()
        yield from self._certificates(managed_states(self._daemon), now)
        cache = getattr(self._daemon, "cache", None)
        yield GaugeMetricFamily(
            "kongacme_certificate_cache_entries",
            "Names with a certificate in the in-process cache read by TLS handshakes.",
            value=0 if cache is None else len(cache.names()),
        )
        manager = getattr(self._daemon, "manager", None)
        yield from self._orders(collections.Counter() if manager is None else manager.stats)
        issuer = getattr(self._daemon, "issuer", None)
        if getattr(issuer, "ledger", None) is not None:
            yield from self._issuers(issuer, cache)
        tls_factory = getattr(self._daemon, "tls_factory", None)
        handshakes = getattr(tls_factory, "handshakes", None) or {}
        yield _labelled(
            CounterMetricFamily(
                "kongacme_tls_handshakes", "Connections on the TLS listener by outcome.", labels=["outcome"]
            ),
            handshakes,
            HANDSHAKE_OUTCOMES,
        )
        engine = getattr(self._daemon, "lean", None)
        if engine is not None:
            yield self._engine(engine)
        yield _labelled(
            CounterMetricFamily(
                "kongacme_storage_errors", "Failed storage operations by operation.", labels=["operation"]
            ),
            self._storage_errors(),
            STORAGE_OPERATIONS,
        )
        limiter = getattr(self._daemon, "connection_limiter", None)
        if limiter is not None:
            yield from self._connections(limiter)

    def _engine(self, engine: Any) -> Metric:
        """
        The lean engine's connections by path. With workers the master's
        engine accepts nothing: the workers' sums instead (dead ones
        included, as for the handshakes).
        """
        mode = getattr(self._daemon, "workers", None)
        return _labelled(
            CounterMetricFamily(
                "kongacme_engine_connections",
                "Connections the lean engine accepted on the TLS listener, by path: lean (served by the engine, "
                "counted when its relay starts) or handed_over (to the Twisted path, counted when handed over).",
                labels=["path"],
            ),
            engine.connections() if mode is None else mode.summed("engine"),
            ENGINE_PATHS,
        )

    def _issuers(self, chain: Any, cache: Any) -> Iterator[Metric]:
        """
        By CA (``acme.api_uri`` and ``issuance.fallback_issuers``, label
        ``directory``): health, orders, fallbacks taken and the
        certificates in the cache each issued.
        """
        ledger = chain.ledger
        up = GaugeMetricFamily(
            "kongacme_acme_issuer_up",
            "1 unless the CA's last order failed through its fault (unreachable, 5xx, rate limited, timeout).",
            labels=["directory", "role"],
        )
        orders = CounterMetricFamily(
            "kongacme_acme_issuer_orders",
            "Orders at the CA by result: issued, ca_failed (its fault: the order moved on), refused (not its fault).",
            labels=["directory", "result"],
        )
        for entry in chain.status():
            up.add_metric([entry["directory"], entry["role"]], 1 if entry["available"] else 0)
            for result, key in (("issued", "issued"), ("ca_failed", "failed"), ("refused", "refused")):
                orders.add_metric([entry["directory"], result], entry[key])
        yield up
        yield orders
        fallbacks = CounterMetricFamily(
            "kongacme_acme_fallbacks",
            "Orders moved on from a CA to the next one after it failed through its fault.",
            labels=["from_directory", "to_directory"],
        )
        for (frm, to), count in sorted(ledger.fallbacks.items()):
            fallbacks.add_metric([frm, to], count)
        yield fallbacks
        counts: collections.Counter[str] = collections.Counter()
        seen: set[int] = set()
        for name in [] if cache is None else cache.names():
            certified = cache.get(name)
            if certified is None or id(certified) in seen:
                continue
            seen.add(id(certified))
            issued_by = ledger.issued_by(certified)
            if issued_by is not None:
                counts[issued_by.directory] += 1
        certificates = GaugeMetricFamily(
            "kongacme_certificates_by_issuer",
            "Certificates in the cache by the CA that issued them, as recorded by this process (or read from "
            "storage by the Admin API); certificates with no record are not counted.",
            labels=["directory"],
        )
        for directory in sorted(set(counts) | set(chain.directories)):
            certificates.add_metric([directory], counts.get(directory, 0))
        yield certificates

    def _connections(self, limiter: Any) -> Iterator[Metric]:
        in_use = GaugeMetricFamily(
            "kongacme_connections", "Client connections open on the listener.", labels=["listener"]
        )
        limit = GaugeMetricFamily(
            "kongacme_connections_limit", "Connections the listener accepts at most (limits.<listener>).",
            labels=["listener"],
        )
        paused = GaugeMetricFamily(
            "kongacme_listener_paused",
            "1 while the listener is at a limit and new connections wait in the kernel backlog.",
            labels=["listener"],
        )
        refused = CounterMetricFamily(
            "kongacme_connections_refused",
            "Connections closed at accept because a limit was reached in the same accept batch.",
            labels=["listener"],
        )
        for kind, count, cap, is_paused, closed in self._with_workers(limiter.snapshot()):
            in_use.add_metric([kind], count)
            limit.add_metric([kind], cap)
            paused.add_metric([kind], 1 if is_paused else 0)
            refused.add_metric([kind], closed)
        yield in_use
        yield limit
        yield paused
        yield refused
        yield GaugeMetricFamily(
            "kongacme_connections_max", "Connections on all listeners together, at most (limits.max_connections).",
            value=limiter.budget.max_connections,
        )

    def _with_workers(
        self, rows: Iterable[tuple[str, int, int, bool, int]]
    ) -> Iterator[tuple[str, int, int, bool, int]]:
        """
        With workers the master never accepts on the TLS sockets: its own
        ``tls`` row would read 0. Report the workers' instead, as of their
        last reports: connections, caps and refusals summed (each worker has
        its own limit), paused while any worker is.
        """
        mode = getattr(self._daemon, "workers", None)
        for row in rows:
            if row[0] == "tls" and mode is not None:
                # Every live worker (one draining after a reload included)
                # holds connections; the caps are the current workers'.
                reports = list(mode.reports.values())
                current = list(mode.counters.values())
                row = (
                    "tls",
                    sum(r.get("connections", 0) for r in reports),
                    sum(r.get("connections_limit", 0) for r in current),
                    any(r.get("paused", False) for r in current),
                    sum(r.get("refused", 0) for r in reports),
                )
            yield row

    def _storage_errors(self) -> Mapping[str, int]:
        errors = getattr(self._daemon, "storage_errors", None)
        if errors is None:
            errors = getattr(getattr(self._daemon, "storage", None), "errors", None)
        return errors if isinstance(errors, Mapping) else {}

    def _host_limit(self) -> int:
        admin = getattr(getattr(self._daemon, "config", None), "admin", None)
        limit = getattr(admin, "metrics_host_limit", PER_HOST_SERIES_LIMIT)
        return limit if isinstance(limit, int) else PER_HOST_SERIES_LIMIT

    def _certificates(self, states: list[RenewalState], now: float) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "kongacme_certificates_managed", "Certificates kongacme manages (renews).", value=len(states)
        )
        yield from self._certificate_counts(states, now)
        per_host = len(states) <= self._host_limit()
        yield GaugeMetricFamily(
            "kongacme_certificate_host_series",
            "1 while the {host} series are exported (managed certificates <= admin.metrics_host_limit), else 0.",
            value=1 if per_host else 0,
        )
        if not per_host:
            soonest = min((s.not_after for s in states if s.admitted and s.not_after is not None), default=None)
            if soonest is not None:
                yield self._soonest(soonest - now)
            return
        expiry = GaugeMetricFamily(
            "kongacme_certificate_expiry_seconds",
            "Seconds until the host's certificate expires (negative once expired).",
            labels=["host"],
        )
        failures = GaugeMetricFamily(
            "kongacme_renewal_failures_in_a_row", "Failed renewal attempts in a row for the host.", labels=["host"]
        )
        admitted = GaugeMetricFamily(
            "kongacme_certificate_admitted",
            "1 when the configuration still admits the host (it is renewed), else 0.",
            labels=["host"],
        )
        soonest = None
        for state in states:
            if state.not_after is not None:
                expiry.add_metric([state.host], state.not_after - now)
                if state.admitted and (soonest is None or state.not_after < soonest):
                    soonest = state.not_after
            failures.add_metric([state.host], state.failures)
            admitted.add_metric([state.host], 1 if state.admitted else 0)
        yield expiry
        yield failures
        yield admitted
        if soonest is not None:
            yield self._soonest(soonest - now)

    @staticmethod
    def _soonest(seconds: float) -> Metric:
        # One series whatever the number of hosts: what to alert on when
        # there are no per-host series (allow_any_domain fleets).
        return GaugeMetricFamily(
            "kongacme_certificate_soonest_expiry_seconds",
            "Seconds until the first of the admitted (renewed) certificates expires.",
            value=seconds,
        )

    @staticmethod
    def _certificate_counts(states: list[RenewalState], now: float) -> Iterator[Metric]:
        """Counts by state, a fixed number of series for any number of hosts."""
        expiring = GaugeMetricFamily(
            "kongacme_certificates_expiring",
            "Admitted (renewed) certificates that expire within the period (expired ones included).",
            labels=["within"],
        )
        left = sorted(s.not_after - now for s in states if s.admitted and s.not_after is not None)
        for label, seconds in EXPIRY_PERIODS:
            expiring.add_metric([label], bisect.bisect_right(left, seconds))
        yield expiring
        yield GaugeMetricFamily(
            "kongacme_certificates_renewal_failing",
            "Certificates whose last renewal attempt failed (failures in a row > 0).",
            value=sum(1 for s in states if s.failures),
        )
        yield GaugeMetricFamily(
            "kongacme_certificates_not_admitted",
            "Certificates the configuration no longer admits (kept, not renewed).",
            value=sum(1 for s in states if not s.admitted),
        )

    def _orders(self, stats: Mapping[str, int]) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "kongacme_orders_started", "Certificate orders sent to the CA.", value=stats.get("orders_started", 0)
        )
        yield CounterMetricFamily(
            "kongacme_orders_succeeded", "Certificate orders that ended with a certificate.",
            value=stats.get("orders_succeeded", 0),
        )
        reasons = _prefixed(stats, "orders_failed:")
        unattributed = stats.get("orders_failed", 0) - sum(reasons.values())
        if unattributed > 0:
            reasons["other"] = reasons.get("other", 0) + unattributed
        yield _labelled(
            CounterMetricFamily("kongacme_orders_failed", "Certificate orders that failed, by reason.",
                                labels=["reason"]),
            reasons,
            ORDER_FAILURE_REASONS,
        )
        yield _labelled(
            CounterMetricFamily(
                "kongacme_handshakes_held",
                "Handshakes held for an on-demand order, by how the wait ended.",
                labels=["result"],
            ),
            {result: stats.get("handshake_held_" + result, 0) for result in HELD_RESULTS},
            HELD_RESULTS,
        )
        yield _labelled(
            CounterMetricFamily(
                "kongacme_handshake_orders_refused",
                "Handshakes for a name without a certificate that started no order, by reason.",
                labels=["reason"],
            ),
            {reason: stats.get("handshake_" + reason, 0) for reason in REFUSAL_REASONS},
            REFUSAL_REASONS,
        )

