"""
Tests for kongacme.acme.polling, driven by a Clock.
"""

from __future__ import annotations

import email.utils

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from kongacme.acme.polling import DEFAULT_SCHEDULE, PollSchedule, PollTimeout, parse_retry_after, poll


class Resource:
    """
    A resource that becomes final after ``after`` reads, each read
    recorded with the clock's time.
    """

    def __init__(self, clock: Clock, after: int, retry_after: float | None = None):
        self.clock = clock
        self.after = after
        self.retry_after = retry_after
        self.reads: list[float] = []

    def fetch(self) -> Deferred:
        self.reads.append(self.clock.seconds())
        return succeed(len(self.reads) > self.after)


class PollScheduleTests(SynchronousTestCase):
    """
    Tests for PollSchedule.
    """

    def test_default_starts_short(self) -> None:
        """
        The default schedule starts at 10 ms and doubles up to 2 s, so a
        local CA that validates in tens of milliseconds is not waited on for
        a second.
        """
        delays = DEFAULT_SCHEDULE.delays()
        self.assertEqual([next(delays) for _ in range(10)], [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.0, 2.0])
        self.assertEqual(DEFAULT_SCHEDULE.total, 120.0)

    def test_invalid(self) -> None:
        """
        Non-positive values and a factor below 1 are refused.
        """
        self.assertRaises(ValueError, PollSchedule, first=0)
        self.assertRaises(ValueError, PollSchedule, total=-1)
        self.assertRaises(ValueError, PollSchedule, factor=0.5)
        self.assertRaises(ValueError, PollSchedule, longest=True)


class ParseRetryAfterTests(SynchronousTestCase):
    """
    Tests for parse_retry_after.
    """

    def test_seconds(self) -> None:
        """
        delay-seconds is taken as is, from str or bytes.
        """
        self.assertEqual(parse_retry_after("120", 1000.0), 120.0)
        self.assertEqual(parse_retry_after(b" 3 ", 1000.0), 3.0)

    def test_http_date(self) -> None:
        """
        An HTTP-date gives the seconds from ``now`` until then; a date in the
        past gives 0.
        """
        now = 1_700_000_000.0
        date = email.utils.formatdate(now + 90, usegmt=True)
        self.assertEqual(parse_retry_after(date, now), 90.0)
        self.assertEqual(parse_retry_after(email.utils.formatdate(now - 90, usegmt=True), now), 0.0)

    def test_invalid(self) -> None:
        """
        Absent, empty, negative or unparseable values give None.
        """
        for value in (None, "", "-5", "soon", "1.5e3x", "Fri, 99 Foo 2024"):
            self.assertIsNone(parse_retry_after(value, 0.0), value)


class PollTests(SynchronousTestCase):
    """
    Tests for poll.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.schedule = PollSchedule(first=1, factor=2, longest=4, total=20)

    def test_final_at_once(self) -> None:
        """
        A resource that is final on the first read is returned without any
        wait.
        """
        resource = Resource(self.clock, after=0)
        d = poll(self.clock, resource.fetch, bool, what="x", schedule=self.schedule)
        self.assertIs(self.successResultOf(d), True)
        self.assertEqual(resource.reads, [0.0])

    def test_schedule(self) -> None:
        """
        Without Retry-After the reads follow the schedule: 1, 2, 4, 4 s
        apart.
        """
        resource = Resource(self.clock, after=4)
        d = poll(self.clock, resource.fetch, bool, what="x", schedule=self.schedule)
        self.clock.pump([0.5] * 30)
        self.assertIs(self.successResultOf(d), True)
        self.assertEqual(resource.reads, [0.0, 1.0, 3.0, 7.0, 11.0])

    def test_wait_first(self) -> None:
        """
        With wait_first the first read comes after the first step.
        """
        resource = Resource(self.clock, after=0)
        d = poll(self.clock, resource.fetch, bool, what="x", schedule=self.schedule, wait_first=True)
        self.assertNoResult(d)
        self.clock.advance(1)
        self.successResultOf(d)
        self.assertEqual(resource.reads, [1.0])

    def test_retry_after(self) -> None:
        """
        A Retry-After from the CA replaces the schedule's step.
        """
        resource = Resource(self.clock, after=1)
        d = poll(self.clock, resource.fetch, bool, what="x", retry_after=lambda result: 7.0, schedule=self.schedule)
        self.clock.advance(6.9)
        self.assertEqual(len(resource.reads), 1)
        self.clock.advance(0.1)
        self.successResultOf(d)
        self.assertEqual(resource.reads, [0.0, 7.0])

    def test_timeout(self) -> None:
        """
        When the total time is up and the resource is still not final,
        PollTimeout names what was awaited.
        """
        resource = Resource(self.clock, after=1000)
        d = poll(self.clock, resource.fetch, bool, what="authorization of a.test", schedule=self.schedule)
        self.clock.pump([1] * 25)
        error = self.failureResultOf(d, PollTimeout).value
        self.assertEqual(str(error), "timed out waiting for authorization of a.test after 20.0 s")
        self.assertEqual(resource.reads[-1], 20.0)

    def test_retry_after_past_deadline(self) -> None:
        """
        A Retry-After longer than the time left is cut to the deadline: one
        last read there, then PollTimeout.
        """
        resource = Resource(self.clock, after=1000)
        d = poll(self.clock, resource.fetch, bool, what="x", retry_after=lambda result: 3600.0, schedule=self.schedule)
        self.clock.advance(20)
        self.failureResultOf(d, PollTimeout)
        self.assertEqual(resource.reads, [0.0, 20.0])

    def test_fetch_failure(self) -> None:
        """
        A failing read ends the polling with its error.
        """
        d = poll(self.clock, lambda: fail(ValueError("boom")), bool, what="x", schedule=self.schedule)
        self.failureResultOf(d, ValueError)

    def test_cancel(self) -> None:
        """
        Cancelling stops the polling: no read after it.
        """
        resource = Resource(self.clock, after=1000)
        d = poll(self.clock, resource.fetch, bool, what="x", schedule=self.schedule)
        d.cancel()
        self.clock.advance(100)
        self.assertEqual(resource.reads, [0.0])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.failureResultOf(d)
