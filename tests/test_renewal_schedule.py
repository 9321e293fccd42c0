"""
Tests for kongacme.renewal.schedule: due times, retry delays, log levels.
"""

import random

from twisted.trial.unittest import SynchronousTestCase

from kongacme.renewal.schedule import DAY, due_time, pick_in_window, retry_delay, severity


class DueTimeTests(SynchronousTestCase):
    def test_threshold(self):
        """A 90-day certificate is due renew_threshold_days before expiry (Kong's rule)."""
        self.assertEqual(due_time(0.0, 90 * DAY, 14), (76 * DAY, "threshold"))

    def test_third_of_lifetime(self):
        """A 6-day certificate is due when a third of its lifetime (2 days) remains, not at once."""
        self.assertEqual(due_time(0.0, 6 * DAY, 14), (4 * DAY, "third_of_lifetime"))

    def test_boundary(self):
        """At exactly three thresholds of lifetime both rules agree; the threshold rule is named."""
        self.assertEqual(due_time(0.0, 42 * DAY, 14), (28 * DAY, "threshold"))

    def test_minutes(self):
        """A 6-minute certificate (Pebble's short validity) is due after 4 minutes."""
        due, rule = due_time(1000.0, 1360.0, 14)
        self.assertAlmostEqual(due, 1240.0)
        self.assertEqual(rule, "third_of_lifetime")


class RetryDelayTests(SynchronousTestCase):
    def setUp(self):
        self.rng = random.Random(7)

    def test_doubles_with_jitter(self):
        """The delay doubles per failure, within ±20 % jitter."""
        for failures, base in ((1, 60), (2, 120), (3, 240), (4, 480)):
            delay = retry_delay(failures, 60, 21600, 60 * DAY, self.rng)
            self.assertTrue(0.8 * base <= delay <= 1.2 * base, (failures, delay))

    def test_capped(self):
        """The delay never exceeds backoff_max (plus jitter)."""
        delay = retry_delay(30, 60, 3600, 60 * DAY, self.rng)
        self.assertTrue(0.8 * 3600 <= delay <= 1.2 * 3600, delay)

    def test_shrinks_near_expiry(self):
        """With 10 hours left the delay is at most an hour: a tenth of what remains."""
        delay = retry_delay(30, 60, 21600, 10 * 3600, self.rng)
        self.assertLessEqual(delay, 1.2 * 3600)

    def test_never_below_initial_when_expired(self):
        """An expired certificate is retried every backoff_initial, not in a busy loop."""
        delay = retry_delay(5, 60, 21600, -5 * DAY, self.rng)
        self.assertTrue(48 <= delay <= 72, delay)

    def test_retry_after_honoured(self):
        """The CA's Retry-After wins over a shorter backoff."""
        self.assertEqual(retry_delay(1, 60, 21600, 60 * DAY, self.rng, retry_after=900), 900)

    def test_jitter_varies(self):
        """Jitter spreads a fleet's retries."""
        delays = {round(retry_delay(3, 60, 21600, 60 * DAY, self.rng), 3) for _ in range(20)}
        self.assertGreater(len(delays), 10)


class SeverityTests(SynchronousTestCase):
    def test_levels(self):
        """warn while there is time, error in the threshold's last half, critical near or after expiry."""
        self.assertEqual(severity(13 * DAY, 14, 3), "warn")
        self.assertEqual(severity(6 * DAY, 14, 3), "error")
        self.assertEqual(severity(2 * DAY, 14, 3), "critical")
        self.assertEqual(severity(-1, 14, 3), "critical")


class PickTests(SynchronousTestCase):
    def test_inside_window(self):
        """Picks fall inside the window and spread over it."""
        rng = random.Random(1)
        picks = [pick_in_window(100.0, 200.0, rng) for _ in range(200)]
        self.assertTrue(all(100.0 <= p <= 200.0 for p in picks))
        self.assertLess(min(picks), 120.0)
        self.assertGreater(max(picks), 180.0)
