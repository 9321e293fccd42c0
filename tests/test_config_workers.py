"""
Tests for the ``workers`` field of kongacme.config.daemon.
"""

from __future__ import annotations

from unittest import mock

from twisted.trial.unittest import SynchronousTestCase

from kongacme.config import parse_config

from tests.test_config import problems_of


class WorkersFieldTests(SynchronousTestCase):
    """
    Tests for ``workers: auto | N``.
    """

    def test_default_is_one(self) -> None:
        """Without the field the daemon is one process."""
        self.assertEqual(parse_config({}, "/srv").workers, 1)

    def test_number(self) -> None:
        """An integer from 1 to 256 is taken as it is."""
        self.assertEqual(parse_config({"workers": 1}, "/srv").workers, 1)
        self.assertEqual(parse_config({"workers": 256}, "/srv").workers, 256)

    def test_auto(self) -> None:
        """auto is the number of CPUs this process may run on."""
        with mock.patch("os.sched_getaffinity", return_value={0, 1, 2}):
            self.assertEqual(parse_config({"workers": "auto"}, "/srv").workers, 3)

    def test_invalid(self) -> None:
        """Anything else is an error naming the field."""
        for value in (0, 257, "two", True, 1.5):
            self.assertEqual(
                problems_of(self, {"workers": value}),
                [("workers", "must be auto or an integer between 1 and 256")],
                value,
            )

    def test_haproxy_tls_with_workers(self) -> None:
        """A haproxy: TLS listener is taken with workers > 1 as with one process (a bad one is still refused)."""
        config = parse_config({"workers": 2, "listen": {"tls": ["tcp:443", "haproxy:tcp:8443"]}}, "/srv")
        self.assertEqual((config.workers, config.listen.tls), (2, ("tcp:443", "haproxy:tcp:8443")))
        self.assertEqual(
            problems_of(self, {"workers": 2, "listen": {"tls": ["haproxy:"]}}),
            [("listen.tls[0]", "haproxy: needs the endpoint it wraps, e.g. haproxy:tcp:443")],
        )


class CacheSizeFieldTests(SynchronousTestCase):
    """
    Tests for ``tls.cache_size``.
    """

    def test_default(self) -> None:
        """A worker keeps certificates for 10,000 names unless told otherwise."""
        self.assertEqual(parse_config({}, "/srv").tls.cache_size, 10_000)
        self.assertEqual(parse_config({"tls": {"cache_size": 2}}, "/srv").tls.cache_size, 2)

    def test_invalid(self) -> None:
        """Zero, negatives and non-integers are errors naming the field."""
        for value in (0, -1, "many", 1.5):
            [(path, _)] = problems_of(self, {"tls": {"cache_size": value}})
            self.assertEqual(path, "tls.cache_size", value)


class DrainTimeoutFieldTests(SynchronousTestCase):
    """
    Tests for ``workers_drain_timeout``.
    """

    def test_default(self) -> None:
        """Workers get 10 s to finish their connections on stop unless told otherwise."""
        self.assertEqual(parse_config({}, "/srv").workers_drain_timeout, 10.0)
        self.assertEqual(parse_config({"workers_drain_timeout": 0}, "/srv").workers_drain_timeout, 0)
        self.assertEqual(parse_config({"workers_drain_timeout": 2.5}, "/srv").workers_drain_timeout, 2.5)

    def test_invalid(self) -> None:
        """A negative or non-number value is an error naming the field."""
        for value in (-1, "long"):
            [(path, _)] = problems_of(self, {"workers_drain_timeout": value})
            self.assertEqual(path, "workers_drain_timeout", value)

    def test_worker_settings(self) -> None:
        """The worker's settings carry it (a worker sent SIGTERM itself drains that long)."""
        from kongacme.workers import channel

        config = parse_config({"workers": 2, "workers_drain_timeout": 3}, "/srv")
        self.assertEqual(channel.read_settings(channel.worker_settings(config)).drain_timeout, 3.0)
