"""
Tests for kongacme.renewal.service with an injected Clock, the real
certificate manager, memory storage and a fake issuer.
"""

from __future__ import annotations

import datetime
import random

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase

from kongacme.acme.ari import RenewalWindow, cert_id
from kongacme.config import IssuanceConfig
from kongacme.config.daemon import RenewalConfig
from kongacme.errors import AcmeProblem, AcmeTransportError
from kongacme.issuance.admission import Admission
from kongacme.issuance.manager import CertificateManager
from kongacme.renewal.schedule import DAY
from kongacme.renewal.service import RenewalService
from kongacme.storage import keys
from kongacme.testing import FakeIssuer, MemoryStorage, TestCA
from kongacme.tls.cache import CertificateCache
from kongacme.tls.fallback import generate_self_signed

START = 1_800_000_000.0
SETTINGS = RenewalConfig(check_interval=600.0, first_check=5.0)


class Node:
    """One daemon's renewal parts: cache, manager and renewal service."""

    def __init__(self, clock, storage, issuer, domains=("*.example.test",), settings=SETTINGS, **kwargs):
        self.clock = clock
        self.cache = CertificateCache(generate_self_signed())
        self.manager = CertificateManager(
            self.cache, storage, issuer, clock, Admission(list(domains)), IssuanceConfig(), fail_backoff_minutes=5
        )
        self.events: list[dict] = []
        self.service = RenewalService(
            self.manager,
            self.managed,
            lambda host: self.manager.admission.admits(host),
            clock,
            settings,
            14.0,
            rng=random.Random(3),
            **kwargs,
        )
        self.service.log = Logger(observer=self.events.append)

    def managed(self):
        return {name: self.cache.get(name) for name in self.cache.names()}

    def messages(self, level=None):
        return [
            e["log_format"].format(**e)
            for e in self.events
            if level is None or e["log_level"].name == level
        ]


class _World:
    """A Clock at START, memory storage, a test CA and a fake issuer using both."""

    def make_world(self):
        self.clock = Clock()
        self.clock.advance(START)
        self.storage = MemoryStorage(self.clock)
        self.ca = TestCA.create()
        self.issuer = FakeIssuer(self.ca)
        self.issuer.clock = self.clock


class RenewalServiceTests(_World, SynchronousTestCase):
    def setUp(self):
        self.make_world()
        self.node = Node(self.clock, self.storage, self.issuer)

    def tearDown(self):
        if self.node.service.running:
            self.node.service.stopService()

    def cert(self, host="a.example.test", age_days=0.0, lifetime_days=90.0, node=None):
        """Put a certificate issued ``age_days`` ago in the node's cache and in storage."""
        start = datetime.datetime.fromtimestamp(self.clock.seconds() - age_days * DAY, datetime.timezone.utc)
        certified = self.ca.issue([host], not_before=start, lifetime=datetime.timedelta(days=lifetime_days))
        (node or self.node).cache.put(certified, [host])
        self.successResultOf(self.storage.set(keys.cert_key(host), keys.encode_cert_key(certified)))
        return certified

    def served(self, host="a.example.test", node=None):
        return (node or self.node).cache.get(host)

    def test_first_check_soon_after_start(self):
        """A due certificate is renewed first_check seconds after start, not 24 hours later as in Kong."""
        old = self.cert(age_days=80)
        self.node.service.startService()
        self.clock.advance(4.9)
        self.assertEqual(self.issuer.requests, [])
        self.clock.advance(0.2)
        self.assertEqual(self.issuer.requests, ["a.example.test"])
        new = self.served()
        self.assertNotEqual(new.fingerprint, old.fingerprint)
        stored = keys.decode_cert_key(self.successResultOf(self.storage.get(keys.cert_key("a.example.test"))), "k")
        self.assertEqual(stored.fingerprint, new.fingerprint)
        state = self.node.service.state("a.example.test")
        self.assertEqual((state.failures, state.last_error, state.last_success), (0, None, self.clock.seconds()))

    def test_renewed_when_due_not_before(self):
        """
        A certificate with 60 days left is not renewed on the first pass; it
        is renewed at its due time (not_after - 14 days), to the second.
        """
        certified = self.cert(age_days=30)
        due = certified.not_after.timestamp() - 14 * DAY
        self.node.service.startService()
        self.clock.advance(5)
        self.assertEqual(self.issuer.requests, [])
        state = self.node.service.state("a.example.test")
        self.assertEqual((state.due_at, state.rule, state.next_attempt), (due, "threshold", due))
        times = []
        self.issuer_calls_at(times)
        self.run_until(due - 1)
        self.assertEqual(times, [])
        self.run_until(due + 600)
        self.assertEqual(times, [due])

    def run_until(self, when):
        """Advance the clock call by call (each timer fires at its own time) up to ``when``."""
        while True:
            calls = [c.getTime() for c in self.clock.getDelayedCalls()]
            step = min(calls) if calls else when
            if step > when:
                break
            self.clock.advance(max(0.0, step - self.clock.seconds()))
        self.clock.advance(max(0.0, when - self.clock.seconds()))

    def issuer_calls_at(self, times):
        issue = self.issuer.issue

        def timed(host, private_key=None, replaces=None):
            times.append(self.clock.seconds())
            return issue(host, private_key, replaces)

        self.issuer.issue = timed

    def test_third_of_lifetime(self):
        """A 6-day certificate is renewed when 2 days remain (the threshold rule would renew it at once)."""
        certified = self.cert(lifetime_days=6)
        self.node.service.startService()
        times = []
        self.issuer_calls_at(times)
        self.clock.advance(5)
        self.assertEqual(times, [])
        self.assertEqual(self.node.service.state("a.example.test").rule, "third_of_lifetime")
        self.run_until(certified.not_before.timestamp() + 4 * DAY + 1200)
        self.assertEqual(times, [certified.not_before.timestamp() + 4 * DAY])

    def test_key_reused(self):
        """Renewal reuses the private key, as Kong does."""
        old = self.cert(age_days=80)
        self.successResultOf(self.node.service.renew("a.example.test"))
        self.assertIs(self.issuer.calls[-1][1], old.key)
        self.assertIs(self.served().key, old.key)

    def test_new_key_when_configured(self):
        """renewal.reuse_key false orders with a new key."""
        import attrs

        node = Node(self.clock, self.storage, self.issuer, settings=attrs.evolve(SETTINGS, reuse_key=False))
        old = self.cert(age_days=80, node=node)
        self.successResultOf(node.service.renew("a.example.test"))
        self.assertIsNone(self.issuer.calls[-1][1])
        self.assertNotEqual(
            node.cache.get("a.example.test").key.public_key().public_numbers(), old.key.public_key().public_numbers()
        )

    def test_backoff_schedule_and_recovery(self):
        """
        Failures are retried with growing delays (60, 120, 240 s … within
        jitter) until the CA answers again; then the failure count resets.
        """
        self.cert(age_days=80)
        self.issuer.fail_with = AcmeTransportError("https://ca.test/new-order", "connection refused")
        times = []
        self.issuer_calls_at(times)
        self.node.service.startService()
        self.clock.advance(5)
        for _ in range(1200):
            self.clock.advance(1)
        gaps = [b - a for a, b in zip(times, times[1:])]
        self.assertGreaterEqual(len(gaps), 3)
        for n, gap in enumerate(gaps[:3]):
            base = 60 * 2 ** n
            self.assertTrue(0.8 * base <= gap <= 1.2 * base + 1, (n, gap))
        state = self.node.service.state("a.example.test")
        self.assertEqual(state.failures, len(times))
        self.assertIn("connection refused", state.last_error)
        self.assertGreater(state.next_attempt, self.clock.seconds())
        self.issuer.fail_with = None
        self.clock.advance(state.next_attempt - self.clock.seconds())
        self.assertEqual((state.failures, state.last_error), (0, None))
        self.assertEqual(self.node.service.state("a.example.test").rule, "threshold")

    def test_logs_escalate(self):
        """A failing renewal logs a warning with time left, and critical within critical_days of expiry."""
        self.issuer.fail_with = AcmeTransportError("https://ca.test/", "timed out")
        self.cert("early.example.test", age_days=77)
        self.cert("late.example.test", age_days=85)
        self.successResultOf(self.node.service.run_pass())
        warnings = self.node.messages("warn")
        critical = self.node.messages("critical")
        self.assertEqual(len(warnings), 1)
        self.assertIn("early.example.test", warnings[0])
        self.assertIn("13.0 days left", warnings[0])
        self.assertEqual(len(critical), 1)
        self.assertIn("late.example.test", critical[0])
        self.assertIn("timed out", critical[0])

    def test_retry_after(self):
        """The CA's Retry-After delays the next attempt beyond the backoff."""
        self.cert(age_days=80)
        self.issuer.fail_with = AcmeProblem("urn:ietf:params:acme:error:rateLimited", "slow down", 429,
                                            retry_after=7200.0)
        self.successResultOf(self.node.service.run_pass())
        state = self.node.service.state("a.example.test")
        self.assertEqual(state.next_attempt, self.clock.seconds() + 7200.0)
        self.assertIn("slow down", state.last_error)

    def test_loop_survives_exceptions(self):
        """An exception anywhere in a pass is logged and the next pass still runs."""
        self.cert(age_days=80)
        calls = []

        def broken(*args, **kwargs):
            calls.append(self.clock.seconds())
            raise RuntimeError("boom")

        self.node.manager.renew = broken
        managed = self.node.service._managed
        crashes = [True]

        def flaky():
            if crashes:
                crashes.pop()
                raise ValueError("cache exploded")
            return managed()

        self.node.service._managed = flaky
        self.node.service.startService()
        self.clock.advance(5)
        self.assertEqual(calls, [])
        self.assertTrue(any("crashed" in m for m in self.node.messages("critical")))
        self.clock.advance(600)
        self.assertEqual(len(calls), 1)
        self.assertIn("boom", self.node.service.state("a.example.test").last_error)
        self.clock.advance(600)
        self.assertGreaterEqual(len(calls), 2)
        self.assertTrue(self.node.service._timer.active())

    def test_not_admitted_not_renewed(self):
        """A host the config no longer admits is kept and reported, not renewed."""
        self.cert("gone.other.test", age_days=80)
        self.successResultOf(self.node.service.run_pass())
        self.assertEqual(self.issuer.requests, [])
        state = self.node.service.state("gone.other.test")
        self.assertFalse(state.admitted)
        self.assertIsNone(state.next_attempt)
        self.assertIsNotNone(self.served("gone.other.test"))
        self.assertTrue(any("no longer admitted" in m for m in self.node.messages("info")))
        self.assertEqual(state.to_json(self.clock.seconds())["admitted"], False)

    def test_renew_all_summary(self):
        """PATCH /acme's pass reports what it checked, renewed and failed."""
        self.cert("due.example.test", age_days=80)
        self.cert("fresh.example.test", age_days=1)
        summary = self.successResultOf(self.node.service.renew_all())
        self.assertEqual(summary, {"checked": 2, "renewed": ["due.example.test"], "failed": {}, "skipped": {}})

    def test_renew_forced_and_unknown(self):
        """renew(host) renews a certificate that is not due; an unknown host is a KeyError."""
        old = self.cert(age_days=1)
        new = self.successResultOf(self.node.service.renew("a.example.test"))
        self.assertNotEqual(new.fingerprint, old.fingerprint)
        self.failureResultOf(self.node.service.renew("nope.example.test"), KeyError)

    def test_adopts_renewal_from_elsewhere(self):
        """A certificate replaced in the cache (by propagation) resets the host's state."""
        self.cert(age_days=80)
        self.issuer.fail_with = AcmeTransportError("u", "down")
        self.successResultOf(self.node.service.run_pass())
        self.assertEqual(self.node.service.state("a.example.test").failures, 1)
        self.cert(age_days=0)
        state = self.node.service.state("a.example.test")
        self.assertEqual((state.failures, state.last_error), (0, None))
        self.assertGreater(state.due_at, self.clock.seconds())


class ReconfigureTests(_World, SynchronousTestCase):
    def test_reload_keeps_failures_and_rechecks_admission(self):
        """A reload re-checks admission and the threshold but keeps each host's failure record."""
        self.make_world()
        node = Node(self.clock, self.storage, self.issuer, domains=("*.example.test", "*.other.test"))
        start = datetime.datetime.fromtimestamp(START - 70 * DAY, datetime.timezone.utc)
        for host in ("a.example.test", "b.other.test"):
            node.cache.put(self.ca.issue([host], not_before=start), [host])
        self.issuer.fail_with = AcmeTransportError("u", "down")
        self.successResultOf(node.service.renew_all())  # 20 days left: not due at 14 days
        self.assertEqual(self.issuer.requests, [])
        self.failureResultOf(node.service.renew("a.example.test"), AcmeTransportError)
        self.assertEqual(node.service.state("a.example.test").failures, 1)
        node.manager.admission = Admission(["*.example.test"])
        node.service.reconfigure(node.manager.admission.admits, SETTINGS, 30.0, None, None, 10)
        a, b = node.service.state("a.example.test"), node.service.state("b.other.test")
        self.assertEqual((a.failures, a.rule), (1, "threshold"))
        self.assertEqual(a.due_at, a.not_after - 30 * DAY)
        self.assertFalse(b.admitted)
        self.assertIsNone(b.next_attempt)


class AriTests(_World, SynchronousTestCase):
    """Renewal inside the CA's ARI window (RFC 9773), against a fake renewalInfo."""

    def setUp(self):
        self.make_world()
        self.windows = {}
        self.fetches = []
        self.node = Node(
            self.clock, self.storage, self.issuer, renewal_info=self.renewal_info, ari_id=lambda c: cert_id(c.leaf)
        )
        start = datetime.datetime.fromtimestamp(START - 30 * DAY, datetime.timezone.utc)
        self.old = self.ca.issue(["a.example.test"], not_before=start, lifetime=datetime.timedelta(days=90))
        self.node.cache.put(self.old, ["a.example.test"])

    def renewal_info(self, certified):
        self.fetches.append(self.clock.seconds())
        window = self.windows.get(certified.fingerprint)
        if isinstance(window, Exception):
            return fail(window)
        return succeed(window)

    def test_window(self):
        """
        The renewal happens at a time inside the window (earlier than the
        threshold rule), the order carries ``replaces``, and the window is
        fetched again after Retry-After.
        """
        start, end = START + 10 * DAY, START + 12 * DAY
        self.windows[self.old.fingerprint] = RenewalWindow(start, end, retry_after=6 * 3600)
        times = []
        issue = self.issuer.issue
        self.issuer.issue = lambda *a, **k: (times.append(self.clock.seconds()), issue(*a, **k))[1]
        self.node.service.startService()
        self.clock.advance(5)
        state = self.node.service.state("a.example.test")
        self.assertEqual(state.rule, "ari")
        self.assertTrue(start <= state.due_at <= end)
        self.assertEqual(state.ari_window, (start, end))
        self.clock.advance(6 * 3600)
        self.assertEqual(len(self.fetches), 2)
        self.assertEqual(state.due_at, self.node.service.state("a.example.test").due_at)
        while not times and self.clock.seconds() < end + DAY:
            self.clock.advance(600)
        self.assertTrue(start <= times[0] <= end, times)
        self.assertEqual(self.issuer.calls[0][2], cert_id(self.old.leaf))
        self.node.service.stopService()

    def test_threshold_still_applies(self):
        """A window later than the threshold rule's time does not delay renewal past it."""
        late = self.old.not_after.timestamp()
        self.windows[self.old.fingerprint] = RenewalWindow(late - 2 * DAY, late - DAY, retry_after=3600)
        self.successResultOf(self.node.service.run_pass())
        state = self.node.service.state("a.example.test")
        self.assertEqual(state.rule, "threshold")
        self.assertEqual(state.due_at, late - 14 * DAY)

    def test_moved_window(self):
        """A CA moving the window earlier (an incident) gets a new pick inside the new window."""
        self.windows[self.old.fingerprint] = RenewalWindow(START + 20 * DAY, START + 22 * DAY, retry_after=3600)
        self.successResultOf(self.node.service.run_pass())
        self.windows[self.old.fingerprint] = RenewalWindow(START + 1000, START + 2000, retry_after=3600,
                                                           explanation_url="https://ca.test/incident")
        self.clock.advance(3600)
        self.successResultOf(self.node.service.run_pass())
        self.assertEqual(len(self.issuer.requests), 1)
        self.assertTrue(any("ca.test/incident" in m for m in self.node.messages("info")))

    def test_fetch_errors_logged_once(self):
        """The CA's ARI failing for many certificates is one warning per pass; the threshold rule holds."""
        for n in range(5):
            certified = self.ca.issue(["h%d.example.test" % n])
            self.node.cache.put(certified, ["h%d.example.test" % n])
            self.windows[certified.fingerprint] = AcmeTransportError("https://ca.test/ari", "refused")
        self.windows[self.old.fingerprint] = AcmeTransportError("https://ca.test/ari", "refused")
        self.successResultOf(self.node.service.run_pass())
        warnings = self.node.messages("warn")
        self.assertEqual(len(warnings), 1)
        self.assertIn("6 certificate(s)", warnings[0])
        self.assertEqual(self.node.service.state("a.example.test").rule, "threshold")

    def test_ca_down_asks_few(self):
        """With the CA unreachable, a pass over many certificates makes at most max_parallel ARI requests."""
        for n in range(50):
            certified = self.ca.issue(["h%d.example.test" % n])
            self.node.cache.put(certified, ["h%d.example.test" % n])
            self.windows[certified.fingerprint] = AcmeTransportError("https://ca.test/ari", "refused")
        self.windows[self.old.fingerprint] = AcmeTransportError("https://ca.test/ari", "refused")
        self.node.service.max_parallel = 1
        self.successResultOf(self.node.service.run_pass())
        self.assertEqual(len(self.fetches), 1)
        self.assertIn("51 certificate(s)", self.node.messages("warn")[0])

    def test_no_ari_asks_once(self):
        """A CA without ARI is asked about one certificate per pass, not all of them."""
        for n in range(20):
            self.node.cache.put(self.ca.issue(["h%d.example.test" % n]), ["h%d.example.test" % n])
        self.node.service.max_parallel = 1
        self.successResultOf(self.node.service.run_pass())
        self.assertEqual(len(self.fetches), 1)

    def test_no_ari_at_ca(self):
        """A CA without ARI is asked once a day, not every pass."""
        self.successResultOf(self.node.service.run_pass())
        self.successResultOf(self.node.service.run_pass())
        self.assertEqual(len(self.fetches), 1)


class FleetRenewalTests(SynchronousTestCase):
    """Two nodes on one storage: one renews, the other takes its certificate."""

    def test_one_order_for_two_nodes(self):
        clock = Clock()
        clock.advance(START)
        storage = MemoryStorage(clock)
        ca = TestCA.create()
        issuer = FakeIssuer(ca)
        issuer.clock = clock
        issuer.hold = True
        a, b = Node(clock, storage, issuer), Node(clock, storage, issuer)
        start = datetime.datetime.fromtimestamp(START - 80 * DAY, datetime.timezone.utc)
        old = ca.issue(["a.example.test"], not_before=start)
        for node in (a, b):
            node.cache.put(old, ["a.example.test"])
        pass_a = a.service.run_pass()
        summary_b = self.successResultOf(b.service.run_pass())
        self.assertEqual(list(summary_b["skipped"]), ["a.example.test"])
        self.assertEqual(b.service.state("a.example.test").failures, 0)
        issuer.release()
        self.assertEqual(self.successResultOf(pass_a)["renewed"], ["a.example.test"])
        clock.advance(30)
        summary_b = self.successResultOf(b.service.run_pass())
        self.assertEqual(summary_b["renewed"], ["a.example.test"])
        self.assertEqual(issuer.requests, ["a.example.test"])
        self.assertEqual(b.cache.get("a.example.test").fingerprint, a.cache.get("a.example.test").fingerprint)

    def test_pass_joins_running_pass(self):
        """A second pass request while one runs joins it (PATCH /acme twice)."""
        clock = Clock()
        clock.advance(START)
        issuer = FakeIssuer()
        issuer.clock = clock
        issuer.hold = True
        node = Node(clock, MemoryStorage(clock), issuer)
        node.cache.put(
            issuer.ca.issue(["a.example.test"], not_before=datetime.datetime.fromtimestamp(
                START - 80 * DAY, datetime.timezone.utc)),
            ["a.example.test"],
        )
        first, second = node.service.renew_all(), node.service.renew_all()
        self.assertIsInstance(second, Deferred)
        issuer.release()
        self.assertEqual(self.successResultOf(first), self.successResultOf(second))
        self.assertEqual(issuer.requests, ["a.example.test"])
