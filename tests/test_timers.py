"""
Tests for kongacme.timers.
"""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from kongacme.timers import TimerWheel


class TimerWheelTests(SynchronousTestCase):
    """
    Tests for TimerWheel: many deadlines behind one DelayedCall.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.wheel = TimerWheel(self.clock)
        self.ran: list[str] = []

    def test_runs_at_deadline(self) -> None:
        """A deadline runs once the clock reaches it, not before."""
        self.wheel.call_later(1.0, lambda: self.ran.append("a"))
        self.clock.advance(0.95)
        self.assertEqual(self.ran, [])
        self.clock.advance(0.05)
        self.assertEqual(self.ran, ["a"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_one_delayed_call(self) -> None:
        """Any number of deadlines keep one DelayedCall, for the earliest."""
        for i in range(100):
            self.wheel.call_later(5 + i, lambda i=i: self.ran.append(str(i)))
        self.wheel.call_later(2, lambda: self.ran.append("early"))
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(2)
        self.assertEqual(self.ran, ["early"])
        self.clock.pump([1] * 200)
        self.assertEqual(len(self.ran), 101)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cancel(self) -> None:
        """
        A cancelled deadline never runs; cancelling the last one leaves no
        DelayedCall; cancel twice is harmless.
        """
        deadline = self.wheel.call_later(1, lambda: self.ran.append("x"))
        self.assertTrue(deadline.active())
        deadline.cancel()
        deadline.cancel()
        self.assertFalse(deadline.active())
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(2)
        self.assertEqual(self.ran, [])

    def test_redirect(self) -> None:
        """
        A redirected deadline runs the new call at the old time, once; the
        old call never runs; it can still be cancelled.
        """
        deadline = self.wheel.call_later(1, lambda: self.ran.append("old"))
        deadline.redirect(lambda: self.ran.append("new"))
        self.assertTrue(deadline.active())
        self.clock.advance(0.95)
        self.assertEqual(self.ran, [])
        self.clock.advance(0.05)
        self.assertEqual(self.ran, ["new"])
        self.assertFalse(deadline.active())
        other = self.wheel.call_later(1, lambda: self.ran.append("other"))
        other.redirect(lambda: self.ran.append("redirected"))
        other.cancel()
        self.clock.advance(2)
        self.assertEqual(self.ran, ["new"])

    def test_cancel_from_same_bucket(self) -> None:
        """A deadline cancelled by another of its bucket, as that one runs, does not run."""
        second = None

        def first() -> None:
            self.ran.append("first")
            second.cancel()

        self.wheel.call_later(1, first)
        second = self.wheel.call_later(1, lambda: self.ran.append("second"))
        self.clock.advance(1)
        self.assertEqual(self.ran, ["first"])

    def test_error_does_not_stop_others(self) -> None:
        """A failing callback is logged; the others of its bucket still run."""
        self.wheel.call_later(1, lambda: 1 / 0)
        self.wheel.call_later(1, lambda: self.ran.append("ok"))
        self.clock.advance(1)
        self.assertEqual(self.ran, ["ok"])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_rearm_from_callback(self) -> None:
        """A callback may add a deadline (a lazily re-armed idle check)."""

        def again() -> None:
            self.ran.append("tick")
            if len(self.ran) < 3:
                self.wheel.call_later(1, again)

        self.wheel.call_later(1, again)
        self.clock.pump([1, 1, 1, 1])
        self.assertEqual(self.ran, ["tick"] * 3)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_bad_resolution(self) -> None:
        """A resolution below one bucket per second is refused."""
        self.assertRaises(ValueError, TimerWheel, self.clock, 0)
