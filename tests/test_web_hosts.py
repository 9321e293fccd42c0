"""
Tests for kongacme.web.hosts.
"""

from twisted.trial.unittest import SynchronousTestCase

from kongacme.web.hosts import HostHeader, parse_host_header


class ParseHostHeaderTests(SynchronousTestCase):
    """
    Tests for parse_host_header.
    """

    def test_names(self) -> None:
        """
        DNS names are lower-cased, lose a trailing dot, and keep a valid
        port separately.
        """
        self.assertEqual(parse_host_header(b"WWW.Example.COM"), HostHeader("www.example.com", None))
        self.assertEqual(parse_host_header(b"example.com.:8080"), HostHeader("example.com", 8080))
        self.assertEqual(parse_host_header(b"localhost"), HostHeader("localhost", None))
        self.assertEqual(parse_host_header(b"xn--bcher-kva.example").name, "xn--bcher-kva.example")

    def test_ip_literals(self) -> None:
        """
        IPv4 and bracketed IPv6 literals are accepted; url_host puts IPv6
        back in brackets.
        """
        self.assertEqual(parse_host_header(b"192.0.2.1:80"), HostHeader("192.0.2.1", 80))
        parsed = parse_host_header(b"[2001:DB8::1]:8080")
        self.assertEqual(parsed, HostHeader("2001:db8::1", 8080))
        self.assertEqual(parsed.url_host, "[2001:db8::1]")
        self.assertEqual(HostHeader("example.com", None).url_host, "example.com")

    def test_invalid(self) -> None:
        """
        Missing, empty, over-long, non-ASCII, whitespace, CR/LF, user info,
        paths, bad ports, bad labels, bad IP literals and IPv6 zone ids are
        all refused.
        """
        for raw in [
            None, b"", b".", b"a..b", b"-a.example", b"a-.example", b"a" * 64 + b".example",
            b"a." * 130 + b"example", b"ex ample.com", b"example.com\r\nX: y", b"example.com\n",
            b"\xc3\xa9.example", b"user@example.com", b"example.com/x", b"example.com:",
            b"example.com:0", b"example.com:65536", b"example.com:80:80", b"example.com:+80",
            b"999.1.1.1", b"1.2.3", b"01.2.3.4", b"[::1", b"[::1]x", b"[::1]:", b"[::1%eth0]",
            b"[example.com]", b"::1", b"<script>",
        ]:
            self.assertIsNone(parse_host_header(raw), raw)
