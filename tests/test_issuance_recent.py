"""
Tests for kongacme.issuance.recent.
"""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from kongacme.issuance.recent import MAX_ENTRIES, ExpiringMap


class ExpiringMapTests(SynchronousTestCase):
    """
    Tests for ExpiringMap: per-host entries that expire and are capped.
    """

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_800_000_000)

    def test_twenty_thousand_names_keep_the_cap(self):
        """20,000 distinct names leave the default cap of 10,000 entries, the newest ones."""
        recent: ExpiringMap[str] = ExpiringMap(self.clock, 3600.0)
        for i in range(20_000):
            recent["n%d.test" % (i,)] = "error"
        self.assertEqual(MAX_ENTRIES, 10_000)
        self.assertEqual((recent.held, len(recent)), (10_000, 10_000))
        self.assertNotIn("n9999.test", recent)
        self.assertEqual(recent["n10000.test"], "error")

    def test_rewrite_makes_newest(self):
        """Writing a host again moves it to the newest end: the oldest other one goes first."""
        recent: ExpiringMap[int] = ExpiringMap(self.clock, 3600.0, cap=2)
        recent["a"] = 1
        recent["b"] = 2
        recent["a"] = 3
        recent["c"] = 4
        self.assertEqual(dict(recent), {"a": 3, "c": 4})

    def test_max_age(self):
        """An entry is gone max_age seconds after it was written."""
        recent: ExpiringMap[str] = ExpiringMap(self.clock, 60.0)
        recent["a"] = "x"
        self.clock.advance(59)
        self.assertEqual(recent.get("a"), "x")
        self.clock.advance(1)
        self.assertIsNone(recent.get("a"))
        self.assertNotIn("a", recent)
        self.assertEqual(recent.held, 0)

    def test_own_expiry(self):
        """put() gives an entry its own expiry (a backoff's end)."""
        recent: ExpiringMap[float] = ExpiringMap(self.clock, 0.0)
        now = self.clock.seconds()
        recent.put("a", now + 300, now + 300)
        recent.put("b", now + 10, now + 10)
        self.clock.advance(11)
        self.assertEqual(list(recent), ["a"])
        self.assertEqual(recent["a"], now + 300)

    def test_writes_sweep(self):
        """Expired entries nobody reads again are swept by a later write, once per sweep interval."""
        recent: ExpiringMap[str] = ExpiringMap(self.clock, 10.0, sweep_interval=60.0)
        for i in range(100):
            recent["n%d" % (i,)] = "x"
        self.clock.advance(30)
        recent["late"] = "x"
        self.assertEqual(recent.held, 101)  # not yet: one sweep a minute
        self.clock.advance(31)
        recent["later"] = "x"
        self.assertEqual(recent.held, 1)

    def test_delete_and_pop(self):
        """del and pop remove an entry; pop with a default for an absent one."""
        recent: ExpiringMap[str] = ExpiringMap(self.clock, 60.0)
        recent["a"] = "x"
        recent["b"] = "y"
        del recent["a"]
        self.assertEqual(recent.pop("b"), "y")
        self.assertIsNone(recent.pop("b", None))
        self.assertEqual(recent.held, 0)
