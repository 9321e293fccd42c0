"""
Tests for kongacme.web.metrics and the ``/metrics`` route of
kongacme.web.visibility: real admin sites on 127.0.0.1 scraped over TCP and
parsed with prometheus_client's own parser.
"""

from __future__ import annotations

import collections
import os
from types import SimpleNamespace
from typing import Any, Optional

import attrs
import prometheus_client
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail, inlineCallbacks
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock, deferLater
from twisted.protocols import wire
from twisted.trial.unittest import SynchronousTestCase, TestCase

from kongacme.config import AdminConfig, IssuanceConfig
from kongacme.errors import AcmeProblem
from kongacme.issuance.admission import Admission
from kongacme.issuance.issuers import IssuerChain, IssuerLedger
from kongacme.issuance.manager import CertificateManager
from kongacme.renewal.state import RenewalState
from kongacme.storage.errors import StorageUnavailable
from kongacme.storage.instrumented import instrument
from kongacme.testing import FakeIssuer, MemoryStorage, TestCA
from kongacme.tls.cache import CertificateCache
from kongacme.tls.fallback import generate_self_signed
from kongacme.web.admin import make_admin_factory
from kongacme.web.metrics import DaemonCollector, managed_states
from kongacme.web.visibility import install_visibility
from tests import tlsclients
from tests.test_tls_protocol import TLSTestMixin
from tests.test_web_support import exchange, get, listen

DAY = 86400.0
NOW = 1_800_000_000.0


@attrs.define
class FakeRenewal:
    """The renewal service as the metrics and status page see it: ``states()``."""

    entries: list[RenewalState] = attrs.field(factory=list)

    def states(self) -> list[RenewalState]:
        return list(self.entries)


@attrs.define
class FakeManager:
    """What the collector reads from a CertificateManager."""

    stats: collections.Counter = attrs.field(factory=collections.Counter)
    last_error: dict = attrs.field(factory=dict)
    admission: Admission = attrs.field(factory=lambda: Admission(["*.example.test"]))


@attrs.define
class FakeTLSFactory:
    """What the collector reads from the TLS factory."""

    handshakes: collections.Counter = attrs.field(factory=collections.Counter)


@attrs.define
class FakeDaemon:
    """
    The DaemonService attributes the visibility routes read; every one may
    be None, as in a daemon without an acme section.
    """

    cache: Optional[CertificateCache] = None
    renewal: Optional[FakeRenewal] = None
    manager: Any = None
    tls_factory: Any = None
    storage: Any = None
    config: Any = None
    issuer: Any = None
    lean: Any = None
    workers: Any = None


def sample_states(now: float = NOW) -> list[RenewalState]:
    """A healthy, a nearly expired, a failing, a not admitted and a hostile host."""
    return [
        RenewalState("healthy.example.test", not_before=now - 30 * DAY, not_after=now + 60 * DAY,
                     issuer="Test R1", due_at=now + 46 * DAY, next_attempt=now + 46 * DAY),
        RenewalState("soon.example.test", not_before=now - 85 * DAY, not_after=now + 5 * DAY,
                     issuer="Test R1", due_at=now - 9 * DAY, next_attempt=now + 3600),
        RenewalState("failing.example.test", not_before=now - 80 * DAY, not_after=now + 10 * DAY,
                     issuer="Test R1", due_at=now - 4 * DAY, next_attempt=now + 7200, failures=3,
                     last_error="urn:ietf:params:acme:error:rateLimited: too many certificates (HTTP 429)"),
        RenewalState("retired.example.test", not_before=now - 10 * DAY, not_after=now + 20 * DAY,
                     issuer="Test R1", admitted=False, due_at=None, next_attempt=None),
        RenewalState('<script>alert("x")</script>.example.test', not_before=now - DAY, not_after=now + 100 * DAY,
                     issuer='"><img src=x onerror=alert(1)>', due_at=now + 80 * DAY, next_attempt=now + 80 * DAY),
    ]


def scrape_families(body: bytes) -> dict[str, Any]:
    """Parse a scrape into ``{family name: family}``."""
    return {family.name: family for family in text_string_to_metric_families(body.decode("utf-8"))}


def sample_value(families: dict[str, Any], name: str, **labels: str) -> float:
    """The value of the one sample called ``name`` with exactly ``labels``."""
    found = [
        sample.value
        for family in families.values()
        for sample in family.samples
        if sample.name == name and sample.labels == labels
    ]
    if len(found) != 1:
        raise AssertionError("%d samples %s%r" % (len(found), name, labels))
    return found[0]


def labelled(families: dict[str, Any], name: str, label: str) -> dict[str, float]:
    """``{label value: sample value}`` for every sample called ``name``."""
    return {
        sample.labels[label]: sample.value
        for family in families.values()
        for sample in family.samples
        if sample.name == name
    }


class MetricsSiteMixin:
    """Starts an admin site with the visibility routes over a FakeDaemon."""

    def start_site(self, daemon: Any, clock: Any, token: Optional[str] = None) -> int:
        site = make_admin_factory(lambda: {}, token, reactor=reactor)
        self.visibility = install_visibility(site, daemon, clock)
        return listen(self, site)

    @inlineCallbacks
    def scrape(self, port: int, headers: bytes = b"") -> Any:
        response = yield get(port, b"/metrics", headers=headers)
        self.assertEqual(response.status, 200, response.body)
        return scrape_families(response.body)


class MetricsEndpointTests(MetricsSiteMixin, TestCase):
    """
    Tests for GET /metrics over a real listening admin site.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.ca = TestCA.create()
        self.cache = CertificateCache(generate_self_signed())
        for name in ("healthy.example.test", "soon.example.test", "static.test"):
            self.cache.put(self.ca.issue([name]))
        self.manager = FakeManager()
        self.daemon = FakeDaemon(cache=self.cache, renewal=FakeRenewal(sample_states()), manager=self.manager,
                                 tls_factory=FakeTLSFactory())

    @inlineCallbacks
    def test_format_and_content_type(self) -> Any:
        """
        GET /metrics answers 200 in the Prometheus text format 0.0.4, which
        prometheus_client's parser reads; HEAD gets the headers only.
        """
        port = self.start_site(self.daemon, self.clock)
        response = yield get(port, b"/metrics")
        self.assertEqual(response.status, 200)
        self.assertEqual(response.header(b"content-type"), b"text/plain; version=0.0.4; charset=utf-8")
        families = scrape_families(response.body)
        self.assertIn("kongacme_certificates_managed", families)
        self.assertEqual(families["kongacme_orders_started"].type, "counter")
        self.assertEqual(families["kongacme_certificate_expiry_seconds"].type, "gauge")
        head = yield get(port, b"/metrics", method=b"HEAD")
        self.assertEqual(head.status, 200)
        self.assertEqual(int(head.header(b"content-length")), len(response.body))
        self.assertTrue(head.raw.endswith(b"\r\n\r\n"))

    @inlineCallbacks
    def test_certificate_state(self) -> Any:
        """
        Managed certificates, seconds until expiry per host (from the
        injected clock), failures in a row, admission and the cache size
        come from the live state.
        """
        port = self.start_site(self.daemon, self.clock)
        families = yield self.scrape(port)
        self.assertEqual(sample_value(families, "kongacme_certificates_managed"), 5)
        self.assertEqual(sample_value(families, "kongacme_certificate_cache_entries"), 3)
        expiry = labelled(families, "kongacme_certificate_expiry_seconds", "host")
        self.assertEqual(expiry["healthy.example.test"], 60 * DAY)
        self.assertEqual(expiry["soon.example.test"], 5 * DAY)
        self.assertEqual(expiry['<script>alert("x")</script>.example.test'], 100 * DAY)
        failures = labelled(families, "kongacme_renewal_failures_in_a_row", "host")
        self.assertEqual(failures["failing.example.test"], 3)
        self.assertEqual(failures["healthy.example.test"], 0)
        admitted = labelled(families, "kongacme_certificate_admitted", "host")
        self.assertEqual(admitted["retired.example.test"], 0)
        self.assertEqual(admitted["healthy.example.test"], 1)
        self.assertEqual(
            sample_value(families, "kongacme_certificate_soonest_expiry_seconds"),
            min(seconds for host, seconds in expiry.items() if admitted[host]),
        )

    @inlineCallbacks
    def test_certificate_counts(self) -> Any:
        """
        Counts by state, a fixed set of series for any number of hosts:
        admitted certificates expiring within each period, failing
        renewals, no longer admitted.
        """
        port = self.start_site(self.daemon, self.clock)
        families = yield self.scrape(port)
        expiring = labelled(families, "kongacme_certificates_expiring", "within")
        self.assertEqual(expiring, {"expired": 0, "1d": 0, "7d": 1, "14d": 2, "30d": 2})
        self.assertEqual(sample_value(families, "kongacme_certificates_renewal_failing"), 1)
        self.assertEqual(sample_value(families, "kongacme_certificates_not_admitted"), 1)
        self.assertEqual(sample_value(families, "kongacme_certificate_host_series"), 1)

    @inlineCallbacks
    def test_host_series_limit(self) -> Any:
        """
        Beyond admin.metrics_host_limit managed certificates, the {host}
        series are left out (one scrape of 100,000 hosts was 300,000 lines);
        the counts and the soonest expiry stay. 0 means never.
        """
        for limit in (4, 0):
            self.daemon.config = SimpleNamespace(admin=AdminConfig(metrics_host_limit=limit))
            port = self.start_site(self.daemon, self.clock)
            families = yield self.scrape(port)
            for name in ("kongacme_certificate_expiry_seconds", "kongacme_renewal_failures_in_a_row",
                         "kongacme_certificate_admitted"):
                self.assertNotIn(name, families)
            self.assertEqual(sample_value(families, "kongacme_certificate_host_series"), 0)
            self.assertEqual(sample_value(families, "kongacme_certificates_managed"), 5)
            self.assertEqual(sample_value(families, "kongacme_certificate_soonest_expiry_seconds"), 5 * DAY)
            self.assertEqual(labelled(families, "kongacme_certificates_expiring", "within")["7d"], 1)
        self.daemon.config = SimpleNamespace(admin=AdminConfig(metrics_host_limit=5))
        families = yield self.scrape(self.start_site(self.daemon, self.clock))
        self.assertEqual(len(labelled(families, "kongacme_certificate_expiry_seconds", "host")), 5)

    @inlineCallbacks
    def test_read_at_scrape_time(self) -> Any:
        """
        Each scrape reads the state afresh: time passing, a new certificate
        and new counts show up without any registration.
        """
        port = self.start_site(self.daemon, self.clock)
        yield self.scrape(port)
        self.clock.advance(DAY)
        self.cache.put(self.ca.issue(["new.test"]))
        self.manager.stats["orders_started"] += 2
        families = yield self.scrape(port)
        expiry = labelled(families, "kongacme_certificate_expiry_seconds", "host")
        self.assertEqual(expiry["soon.example.test"], 4 * DAY)
        self.assertEqual(sample_value(families, "kongacme_certificate_cache_entries"), 4)
        self.assertEqual(sample_value(families, "kongacme_orders_started_total"), 2)

    @inlineCallbacks
    def test_order_counters(self) -> Any:
        """
        Orders started / succeeded / failed by reason come from the
        manager's stats; failures counted without a reason are "other";
        every reason is exported even at zero. Held handshakes and refused
        on-demand orders come from the same stats.
        """
        self.manager.stats.update({
            "orders_started": 7, "orders_succeeded": 3, "orders_failed": 4,
            "orders_failed:ca_problem": 2, "orders_failed:storage": 1,
            "handshake_held_issued": 5, "handshake_held_timeout": 1,
            "handshake_backoff": 2, "handshake_rate_limited": 9,
        })
        port = self.start_site(self.daemon, self.clock)
        families = yield self.scrape(port)
        self.assertEqual(sample_value(families, "kongacme_orders_started_total"), 7)
        self.assertEqual(sample_value(families, "kongacme_orders_succeeded_total"), 3)
        self.assertEqual(
            labelled(families, "kongacme_orders_failed_total", "reason"),
            {"ca_problem": 2, "storage": 1, "other": 1, "backoff": 0, "not_admitted": 0, "in_progress": 0,
             "ca_unreachable": 0},
        )
        self.assertEqual(labelled(families, "kongacme_handshakes_held_total", "result"),
                         {"issued": 5, "failed": 0, "timeout": 1})
        self.assertEqual(labelled(families, "kongacme_handshake_orders_refused_total", "reason"),
                         {"backoff": 2, "rate_limited": 9, "storage_paused": 0})

    @inlineCallbacks
    def test_issuers(self) -> Any:
        """
        By CA directory: up, orders by result, fallbacks taken, and the
        cached certificates each issued (certificates without a record are
        not counted; every CA of the chain appears, at zero too).
        """
        primary, second = FakeIssuer(self.ca), FakeIssuer(self.ca)
        primary.directory, second.directory = "https://one.test/dir", "https://two.test/dir"  # type: ignore
        chain = IssuerChain([primary, second], IssuerLedger(self.clock), MemoryStorage(self.clock), self.clock)
        primary.fail_with = AcmeProblem("about:blank", "Service Unavailable", 503)
        self.cache.put(self.successResultOf(chain.issue("fb.example.test")))
        self.daemon.issuer = chain
        port = self.start_site(self.daemon, self.clock)
        families = yield self.scrape(port)
        self.assertEqual(sample_value(families, "kongacme_acme_issuer_up", directory="https://one.test/dir",
                                      role="primary"), 0)
        self.assertEqual(sample_value(families, "kongacme_acme_issuer_up", directory="https://two.test/dir",
                                      role="fallback 1"), 1)
        self.assertEqual(sample_value(families, "kongacme_acme_issuer_orders_total",
                                      directory="https://one.test/dir", result="ca_failed"), 1)
        self.assertEqual(sample_value(families, "kongacme_acme_issuer_orders_total",
                                      directory="https://two.test/dir", result="issued"), 1)
        self.assertEqual(sample_value(families, "kongacme_acme_fallbacks_total",
                                      from_directory="https://one.test/dir", to_directory="https://two.test/dir"), 1)
        self.assertEqual(labelled(families, "kongacme_certificates_by_issuer", "directory"),
                         {"https://one.test/dir": 0, "https://two.test/dir": 1})

    @inlineCallbacks
    def test_storage_errors(self) -> Any:
        """
        Failures of the instrumented storage are exported per operation.
        """

        class Down(MemoryStorage):
            def get(self, key: str) -> Deferred:
                return fail(StorageUnavailable("down"))

        storage = instrument(Down(self.clock))
        self.daemon.storage = storage
        for _ in range(3):
            storage.get("k").addErrback(lambda f: f.trap(StorageUnavailable))
        yield storage.set("k", b"v")
        port = self.start_site(self.daemon, self.clock)
        families = yield self.scrape(port)
        errors = labelled(families, "kongacme_storage_errors_total", "operation")
        self.assertEqual(errors["get"], 3)
        self.assertEqual(errors["set"], 0)

    @inlineCallbacks
    def test_bearer_token(self) -> Any:
        """
        With an admin token configured, /metrics answers 401 without it and
        200 with it.
        """
        port = self.start_site(self.daemon, self.clock, token="s3cret")
        refused = yield get(port, b"/metrics")
        self.assertEqual(refused.status, 401)
        self.assertNotIn(b"kongacme_", refused.body)
        families = yield self.scrape(port, headers=b"Authorization: Bearer s3cret\r\n")
        self.assertEqual(sample_value(families, "kongacme_certificates_managed"), 5)

    @inlineCallbacks
    def test_daemons_do_not_share_registries(self) -> Any:
        """
        Two daemons in one process each export their own state, and
        nothing is added to prometheus_client's global registry.
        """
        other = FakeDaemon(cache=CertificateCache(generate_self_signed()), renewal=FakeRenewal([]))
        first = self.start_site(self.daemon, self.clock)
        second = self.start_site(other, self.clock)
        mine = yield self.scrape(first)
        theirs = yield self.scrape(second)
        self.assertEqual(sample_value(mine, "kongacme_certificates_managed"), 5)
        self.assertEqual(sample_value(theirs, "kongacme_certificates_managed"), 0)
        self.assertEqual(sample_value(theirs, "kongacme_certificate_cache_entries"), 0)
        global_names = {family.name for family in prometheus_client.REGISTRY.collect()}
        self.assertFalse([name for name in global_names if name.startswith("kongacme")])

    @inlineCallbacks
    def test_empty_daemon(self) -> Any:
        """
        A daemon before start (no cache, manager or TLS factory) scrapes
        cleanly with zeros.
        """
        port = self.start_site(FakeDaemon(), self.clock)
        families = yield self.scrape(port)
        self.assertEqual(sample_value(families, "kongacme_certificates_managed"), 0)
        self.assertEqual(sample_value(families, "kongacme_orders_started_total"), 0)
        self.assertEqual(sample_value(families, "kongacme_tls_handshakes_total", outcome="cached"), 0)


class ManagedStatesTests(SynchronousTestCase):
    """
    Tests for managed_states, the list both routes report.
    """

    def test_renewal_service_states(self) -> None:
        """
        With a renewal service, its states are reported, sorted by host.
        """
        states = sample_states()
        daemon = FakeDaemon(renewal=FakeRenewal(list(reversed(states))))
        self.assertEqual([s.host for s in managed_states(daemon)], sorted(s.host for s in states))

    def test_from_cache_without_renewal(self) -> None:
        """
        Without a renewal service, every cached name is reported with its
        certificate's expiry and issuer, admission and last error from the
        manager.
        """
        ca = TestCA.create("Metrics Test CA")
        cache = CertificateCache(generate_self_signed())
        issued = ca.issue(["a.example.test"])
        cache.put(issued)
        cache.put(ca.issue(["static.test"]))
        manager = FakeManager(last_error={"a.example.test": "boom"})
        states = managed_states(FakeDaemon(cache=cache, manager=manager))
        self.assertEqual([s.host for s in states], ["a.example.test", "static.test"])
        self.assertEqual(states[0].not_after, issued.not_after.timestamp())
        self.assertEqual(states[0].issuer, "Metrics Test CA")
        self.assertEqual(states[0].last_error, "boom")
        self.assertEqual([s.admitted for s in states], [True, False])

    def test_nothing(self) -> None:
        """
        A daemon without cache or renewal manages nothing.
        """
        self.assertEqual(managed_states(FakeDaemon()), [])

    def test_clock_required(self) -> None:
        """
        The collector refuses a clock that is not an IReactorTime.
        """
        self.assertRaises(TypeError, DaemonCollector, FakeDaemon(), object())


@attrs.define
class FakeEngine:
    """What the collector reads from a LeanEngine: ``connections()``."""

    paths: dict[str, int] = attrs.field(factory=dict)

    def connections(self) -> dict[str, int]:
        return dict(self.paths)


@attrs.define
class FakeWorkerMode:
    """What the collector reads from a WorkerMode for the engine's paths: ``summed(part)``."""

    parts: dict[str, dict[str, int]] = attrs.field(factory=dict)

    def summed(self, part: str) -> dict[str, int]:
        return dict(self.parts.get(part, {}))


class EngineConnectionsTests(SynchronousTestCase):
    """
    Tests for ``kongacme_engine_connections_total``, the lean engine's
    connections by path.
    """

    def engine_paths(self, daemon: FakeDaemon) -> Optional[dict[str, float]]:
        """``{path: value}`` of the family, ``None`` when the collector has none."""
        for family in DaemonCollector(daemon, Clock()).collect():
            if family.name == "kongacme_engine_connections":
                self.assertEqual(family.type, "counter")
                self.assertIn("handed_over", family.documentation)
                return {sample.labels["path"]: sample.value for sample in family.samples}
        return None

    def test_both_paths(self) -> None:
        """Both paths are there, from the engine's counts, 0 for a path none took yet."""
        self.assertEqual(self.engine_paths(FakeDaemon(lean=FakeEngine({"lean": 5}))), {"lean": 5, "handed_over": 0})
        self.assertEqual(
            self.engine_paths(FakeDaemon(lean=FakeEngine({"lean": 5, "handed_over": 2}))),
            {"lean": 5, "handed_over": 2},
        )

    def test_no_engine(self) -> None:
        """A daemon without the lean engine (``listen.engine: twisted``) has no such family."""
        self.assertIsNone(self.engine_paths(FakeDaemon()))

    def test_workers(self) -> None:
        """With workers, the workers' sums count, not the master's own (idle) engine."""
        mode = FakeWorkerMode({"engine": {"lean": 7, "handed_over": 3}})
        daemon = FakeDaemon(lean=FakeEngine({"lean": 0, "handed_over": 0}), workers=mode)
        self.assertEqual(self.engine_paths(daemon), {"lean": 7, "handed_over": 3})


class HeldHandshakeStatsTests(SynchronousTestCase):
    """
    Tests for the held-handshake counts CertificateManager's gate keeps in
    ``stats`` (exported as kongacme_handshakes_held_total).
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.issuer = FakeIssuer()
        self.issuer.hold = True
        self.manager = CertificateManager(
            CertificateCache(generate_self_signed()),
            MemoryStorage(self.clock),
            self.issuer,
            self.clock,
            Admission(["*.example.test"]),
            IssuanceConfig(handshake_wait=5.0),
        )

    def test_issued(self) -> None:
        """
        A held handshake whose order succeeds counts as issued, once.
        """
        waiting = self.manager.before_handshake("a.example.test")
        self.assertNoResult(waiting)
        self.issuer.release()
        self.successResultOf(waiting)
        self.clock.advance(10)
        self.assertEqual(self.manager.stats["handshake_held_issued"], 1)
        self.assertEqual(self.manager.stats["handshake_held_timeout"], 0)

    def test_timeout_then_issued(self) -> None:
        """
        A held handshake released by handshake_wait counts as a timeout,
        and not again when the order ends later.
        """
        waiting = self.manager.before_handshake("b.example.test")
        self.clock.advance(5.0)
        self.successResultOf(waiting)
        self.issuer.release()
        self.assertEqual(self.manager.stats["handshake_held_timeout"], 1)
        self.assertEqual(self.manager.stats["handshake_held_issued"], 0)

    def test_failed(self) -> None:
        """
        A held handshake whose order fails counts as failed.
        """
        waiting = self.manager.before_handshake("c.example.test")
        self.issuer.fail_with = RuntimeError("CA on fire")
        self.issuer.release()
        self.successResultOf(waiting)
        self.assertEqual(self.manager.stats["handshake_held_failed"], 1)


class HandshakeOutcomeTests(MetricsSiteMixin, TLSTestMixin, TestCase):
    """
    Tests for the handshake outcomes TLSServerFactory counts, driven by
    real TLS clients and scraped from /metrics.
    """

    @inlineCallbacks
    def wait_for(self, outcome: str, count: int) -> Any:
        # The server counts a failed handshake when it sees the connection
        # go, a moment after the client gave up; a bounded wait, no timing
        # assertion.
        deadline = reactor.seconds() + 10
        while self.factory.handshakes[outcome] < count and reactor.seconds() < deadline:
            yield deferLater(reactor, 0.01, lambda: None)

    @inlineCallbacks
    def test_outcomes(self) -> Any:
        """
        Handshakes served from the cache, from the fallback, after the gate
        held them (with and without a new certificate), refused by the
        client, and connections that were not TLS are each counted once.
        """
        released: dict[str, Deferred] = {}

        class Gate:
            def before_handshake(self, server_name: Optional[str]) -> Optional[Deferred]:
                if server_name and server_name.startswith("held"):
                    released[server_name] = Deferred()
                    return released[server_name]
                return None

        self.factory.gate = Gate()
        yield tlsclients.handshake(self.portno, "exact.test", self.verified())
        yield tlsclients.handshake(self.portno, "a.wild.test", self.verified())
        yield tlsclients.handshake(self.portno, "unknown.test", tlsclients.client_context())
        yield exchange(self.portno, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")

        issued = tlsclients.handshake(self.portno, "held-new.test", self.verified())
        while "held-new.test" not in released:
            yield deferLater(reactor, 0.01, lambda: None)
        self.cache.put(self.ca.issue(["held-new.test"]))
        released["held-new.test"].callback(None)
        yield issued

        fallback = tlsclients.handshake(self.portno, "held-none.test", tlsclients.client_context())
        while "held-none.test" not in released:
            yield deferLater(reactor, 0.01, lambda: None)
        released["held-none.test"].callback(None)
        yield fallback

        refused = tlsclients.handshake(self.portno, "other.test", self.verified())
        yield self.assertFailure(refused, Exception)
        yield self.wait_for("failed", 1)

        port = self.start_site(FakeDaemon(tls_factory=self.factory), Clock())
        families = yield self.scrape(port)
        self.assertEqual(
            labelled(families, "kongacme_tls_handshakes_total", "outcome"),
            {"cached": 2, "fallback": 1, "held_then_issued": 1, "held_then_fallback": 1, "rejected": 1,
             "failed": 1, "abandoned": 0, "timeout": 0, "acme_tls_alpn": 0},
        )


class DaemonWiringTests(MetricsSiteMixin, TestCase):
    """
    Tests for the routes as DaemonService installs them on its Admin
    listener.
    """

    #: ``listen.engine`` of the daemon (a subclass runs the lean engine).
    engine = "twisted"

    @inlineCallbacks
    def test_real_daemon(self) -> Any:
        """
        A started daemon answers /metrics and / on its Admin listener, and
        handshakes on its TLS listener (a name the gate is asked for, and
        one without SNI, proxied to the default upstream) show up in the
        handshake counts, and in the engine's paths
        (:meth:`assert_engine_paths`). Stopped, it leaves nothing in the
        reactor (trial checks).
        """
        from kongacme.config.load import parse_config
        from kongacme.service import DaemonService

        directory = os.path.abspath(self.mktemp())
        local = "tcp:0:interface=127.0.0.1"
        upstream = listen(self, Factory.forProtocol(wire.Echo))
        config = parse_config({
            "state_dir": os.path.join(directory, "state"),
            "default_upstream": "127.0.0.1:%d" % (upstream,),
            "listen": {"tls": [local], "http": [local], "admin": [local], "engine": self.engine},
            "acme": {"account_email": "a@example.test", "api_uri": "https://127.0.0.1:1/directory",
                     "tos_accepted": True, "domains": ["*.example.test"], "storage": "shm"},
        }, directory)
        daemon = DaemonService(reactor, config)
        daemon.startService()
        self.addCleanup(daemon.stopService)
        admin = daemon.listeners["admin"].ports()[0].getHost().port
        tls = daemon.listeners["tls"].ports()[0].getHost().port
        yield tlsclients.handshake(tls, "not-admitted.test", tlsclients.client_context())
        answer = yield tlsclients.handshake(tls, None, tlsclients.client_context(), payload=b"no name")
        self.assertEqual(answer["echo"], b"no name")
        families = yield self.scrape(admin)
        self.assertEqual(sample_value(families, "kongacme_tls_handshakes_total", outcome="fallback"), 2)
        self.assertEqual(sample_value(families, "kongacme_certificates_managed"), 0)
        self.assert_engine_paths(families)
        page = yield get(admin, b"/")
        self.assertEqual(page.status, 200)
        self.assertIn(b"No managed certificates yet.", page.body)

    def assert_engine_paths(self, families: dict[str, Any]) -> None:
        """The Twisted engine has no lean engine paths to count: no such family."""
        self.assertNotIn("kongacme_engine_connections", families)


class DaemonWiringLeanTests(DaemonWiringTests):
    """
    The same with ``listen.engine: lean``: the engine's epoll leaves the
    reactor when the daemon stops.
    """

    engine = "lean"

    def assert_engine_paths(self, families: dict[str, Any]) -> None:
        """
        The name without a certificate goes to the gate, on the Twisted
        path (``handed_over``); the hello without SNI is the engine's
        (``lean``).
        """
        self.assertEqual(
            labelled(families, "kongacme_engine_connections_total", "path"), {"lean": 1, "handed_over": 1}
        )
