"""
Tests for kongacme.config.hosts: host names, patterns and host:port.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from kongacme.config.fields import Invalid
from kongacme.config.hosts import (
    host_pattern,
    host_port,
    hostname_problem,
    is_hostname,
    normalize_hostname,
    server_host,
    server_name,
)


class HostsTests(SynchronousTestCase):
    """
    Tests for kongacme.config.hosts.
    """

    def test_is_hostname(self) -> None:
        """
        Labels are 1-63 letters, digits or hyphens (not at either end); at
        most 253 characters.
        """
        self.assertTrue(is_hostname("a-1.example"))
        self.assertTrue(is_hostname("x" * 63 + ".test"))
        self.assertTrue(is_hostname(".".join(["a" * 61] * 4)))  # 247 characters
        for bad in ("", "a_b.test", "-a.test", "a-.test", "x" * 64 + ".test", ".".join(["a" * 63] * 4), "a..b", "A.test"):
            self.assertFalse(is_hostname(bad), bad)

    def test_host_pattern(self) -> None:
        """
        host_pattern lower-cases exact names and leftmost wildcards and refuses
        the rest.
        """
        self.assertEqual(host_pattern(" *.Example.COM "), "*.example.com")
        self.assertEqual(host_pattern("10.0.0.1"), "10.0.0.1")
        self.assertEqual(host_pattern("Demo.Test."), "demo.test")
        self.assertEqual(host_pattern("*.demo.test."), "*.demo.test")
        for bad in ("*", "*.", "a*.test", "a.test..", ".", "a_b.test", "*.*.test", "test.*", "a.test:80", "[::1]"):
            self.assertRaises(Invalid, host_pattern, bad)

    def test_host_port(self) -> None:
        """
        host_port splits host:port, unbrackets IPv6 and allows underscores.
        """
        self.assertEqual(host_port("Backend_1:8000"), ("backend_1", 8000))
        self.assertEqual(host_port("[::1]:443"), ("::1", 443))
        self.assertEqual(host_port("10.0.0.1:1"), ("10.0.0.1", 1))
        for bad in ("x", "x:", ":1", "x:-1", "x:1.5", "::1:80", "[x]:80"):
            self.assertRaises(Invalid, host_port, bad)

    def test_server_host_and_name(self) -> None:
        """
        server_host takes names and IPs; server_name only names.
        """
        self.assertEqual(server_host("Redis"), "redis")
        self.assertEqual(server_host("::1"), "::1")
        self.assertRaises(Invalid, server_host, "a b")
        self.assertEqual(server_name("Redis.Example"), "redis.example")
        self.assertRaises(Invalid, server_name, "10.0.0.1")
        self.assertRaises(Invalid, server_name, "redis:6379")

    def test_normalize_hostname(self) -> None:
        """
        normalize_hostname strips white space, lower-cases and drops one
        trailing dot; it only normalises (two dots stay, to be refused).
        """
        for value, expected in [(" Dot.Demo.Test. ", "dot.demo.test"), ("a.test", "a.test"),
                                ("a.test..", "a.test.."), (".", ""), ("", ""), ("*.A.test.", "*.a.test")]:
            self.assertEqual(normalize_hostname(value), expected, value)

    def test_hostname_problem(self) -> None:
        """
        hostname_problem accepts DNS host names, names the underscore a CA
        refuses, and calls the rest invalid.
        """
        self.assertIsNone(hostname_problem("a-1.demo.test"))
        self.assertIn("'_' is not allowed", hostname_problem("under_score.demo.test"))
        for bad in ("", "a..b", "a b", "-a.test", "*.a.test", "x" * 64 + ".test"):
            self.assertEqual(hostname_problem(bad), "not a valid host name", bad)
