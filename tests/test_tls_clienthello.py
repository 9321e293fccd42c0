"""
Tests for kongacme.tls.clienthello.
"""

import ssl

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from kongacme.errors import ClientHelloError
from kongacme.tls.clienthello import normalize_server_name, parse_client_hello

from tests.clienthellos import append_extension, append_sni_extension, client_hello_bytes, with_raw_sni


class ParseClientHelloTests(SynchronousTestCase):
    """
    Tests for parse_client_hello.
    """

    def test_server_name_and_alpn(self):
        """The SNI name (lower-cased) and the offered ALPN list are read."""
        hello = parse_client_hello(client_hello_bytes("Demo.Example.COM", ["h2", "http/1.1"]))
        self.assertEqual(hello.server_name, "demo.example.com")
        self.assertEqual(hello.alpn_offered, (b"h2", b"http/1.1"))
        self.assertIsNone(hello.raw_server_name)

    def test_offers_tls13(self):
        """
        ``offers_tls13`` is read from supported_versions: a default client
        offers TLS 1.3, one capped at TLS 1.2 sends no such extension.
        """
        self.assertTrue(parse_client_hello(client_hello_bytes("a.test")).offers_tls13)
        self.assertFalse(parse_client_hello(client_hello_bytes("a.test", max_version=ssl.TLSVersion.TLSv1_2)).offers_tls13)

    def test_supported_versions_without_tls13(self):
        """A supported_versions extension that lists only TLS 1.2, or is cut short, offers no TLS 1.3."""
        for body in (b"\x02\x03\x03", b"\x04\x03\x03\x03", b"\x00", b"\x08\x03"):
            hello = parse_client_hello(append_extension(client_hello_bytes("a.test", max_version=ssl.TLSVersion.TLSv1_2), 43, body))
            self.assertFalse(hello.offers_tls13, body)
        hello = parse_client_hello(append_extension(client_hello_bytes("a.test", max_version=ssl.TLSVersion.TLSv1_2), 43, b"\x04\x03\x03\x03\x04"))
        self.assertTrue(hello.offers_tls13)

    def test_no_sni(self):
        """A hello without SNI parses with server_name None."""
        hello = parse_client_hello(client_hello_bytes())
        self.assertIsNone(hello.server_name)
        self.assertEqual(hello.alpn_offered, ())

    def test_incremental(self):
        """Every strict prefix asks for more bytes; the whole parses."""
        data = client_hello_bytes("a.test", ["h2"])
        for cut in range(0, len(data)):
            self.assertIsNone(parse_client_hello(data[:cut]), cut)
        self.assertEqual(parse_client_hello(data).server_name, "a.test")

    def test_split_across_records(self):
        """A ClientHello fragmented over two TLS records is reassembled."""
        data = client_hello_bytes("split.test")
        payload = data[5:]
        half = len(payload) // 2
        records = (
            b"\x16\x03\x01" + half.to_bytes(2, "big") + payload[:half]
            + b"\x16\x03\x01" + (len(payload) - half).to_bytes(2, "big") + payload[half:]
        )
        self.assertEqual(parse_client_hello(records).server_name, "split.test")

    def test_garbage(self):
        """Bytes that are not a TLS handshake record are refused at once."""
        for garbage in (b"GET / HTTP/1.1\r\n\r\n", b"\x00" * 10, b"\x16\x02", b"\x80\x2e\x01\x03\x01"):
            self.assertRaises(ClientHelloError, parse_client_hello, garbage)

    def test_not_client_hello(self):
        """A handshake record holding another message type is refused."""
        data = b"\x16\x03\x01\x00\x08" + b"\x02\x00\x00\x04" + b"\x03\x03\x00\x00"
        self.assertRaises(ClientHelloError, parse_client_hello, data)

    def test_truncated_inside_message(self):
        """Lengths inside the hello that overrun it are refused."""
        data = bytearray(client_hello_bytes("a.test"))
        data[9 + 34] = 0xFF  # session id length far past the end
        self.assertRaises(ClientHelloError, parse_client_hello, bytes(data))

    def test_oversized(self):
        """A hello announcing more than the limit is refused without waiting."""
        data = b"\x16\x03\x01\x40\x00" + b"\x01\x10\x00\x00" + b"\x00" * 100
        self.assertRaises(ClientHelloError, parse_client_hello, data)

    def test_duplicate_extension(self):
        """Duplicate extensions are illegal (RFC 8446 §4.2) and refused."""
        data = append_sni_extension(client_hello_bytes("a.test"), b"b.test")
        self.assertRaises(ClientHelloError, parse_client_hello, data)

    def test_long_sni_rejected_as_name(self):
        """A 255-byte SNI is no host name: server_name None, raw kept."""
        hello = parse_client_hello(with_raw_sni(b"a" * 255))
        self.assertIsNone(hello.server_name)
        self.assertEqual(hello.raw_server_name, b"a" * 255)

    def test_non_ascii_sni(self):
        """A non-ASCII SNI is no host name: server_name None."""
        hello = parse_client_hello(with_raw_sni("bücher.test".encode("utf-8")))
        self.assertIsNone(hello.server_name)
        self.assertEqual(hello.raw_server_name, "bücher.test".encode("utf-8"))
        self.assertIsNone(hello.unservable)

    def test_unservable_sni(self):
        """
        An SNI with a NUL byte or over 255 bytes (which OpenSSL refuses) is
        no usable name and says why no certificate can be served; up to 255
        bytes without NUL the fallback can be.
        """
        for raw, reason in ((b"a\x00b.test", "SNI with a NUL byte"), (b"demo.test\x00", "SNI with a NUL byte"),
                            (b"a" * 256, "SNI longer than 255 bytes"), (b"x" * 2000, "SNI longer than 255 bytes")):
            hello = parse_client_hello(with_raw_sni(raw))
            self.assertIsNone(hello.server_name, raw)
            self.assertEqual(hello.raw_server_name, raw)
            self.assertEqual(hello.unservable, reason)
        self.assertIsNone(parse_client_hello(with_raw_sni(b"a" * 255)).unservable)
        self.assertIsNone(parse_client_hello(client_hello_bytes("a.test")).unservable)

    def test_trailing_dot(self):
        """An SNI ending with a dot is looked up without it."""
        hello = parse_client_hello(with_raw_sni(b"Demo.Test."))
        self.assertEqual(hello.server_name, "demo.test")
        self.assertIsNone(hello.raw_server_name)
        self.assertIsNone(hello.unservable)


class NormalizeServerNameTests(SynchronousTestCase):
    """
    Tests for normalize_server_name.
    """

    def test_valid(self):
        """Names are lower-cased and a trailing dot dropped."""
        self.assertEqual(normalize_server_name(b"WWW.Example.com."), "www.example.com")
        self.assertEqual(normalize_server_name(b"xn--bcher-kva.test"), "xn--bcher-kva.test")

    def test_invalid(self):
        """Empty labels, bad characters, long labels and long names are refused."""
        for raw in (b"", b".", b"a..b", b"-a.test", b"a-.test", b"a b.test", b"a\x00.test",
                    b"a" * 64 + b".test", (b"a" * 63 + b".") * 4 + b"test", b"\xff.test"):
            self.assertIsNone(normalize_server_name(raw), raw)


_HELLO = client_hello_bytes("Any.Split.test", ["h2", "http/1.1"])


def _records(message: bytes, cuts: list[int]) -> bytes:
    """``message`` (a handshake message) as TLS handshake records cut at ``cuts``."""
    points = sorted({0, len(message), *(c % len(message) for c in cuts)})
    return b"".join(
        b"\x16\x03\x01" + (end - start).to_bytes(2, "big") + message[start:end]
        for start, end in zip(points, points[1:])
    )


class ParseClientHelloPropertyTests(SynchronousTestCase):
    """
    Properties of parse_client_hello: its one-record shortcut and the
    record-by-record reassembly agree, and no input breaks it.
    """

    @settings(max_examples=300, deadline=None)
    @given(cuts=st.lists(st.integers(min_value=1, max_value=4096), max_size=6), extra=st.binary(max_size=64))
    def test_any_fragmentation(self, cuts, extra):
        """However the ClientHello is cut into records (and whatever follows it), it parses the same."""
        whole = parse_client_hello(_HELLO)
        self.assertEqual(parse_client_hello(_records(_HELLO[5:], cuts) + extra), whole)
        self.assertEqual(whole.server_name, "any.split.test")

    @settings(max_examples=500, deadline=None)
    @given(changes=st.lists(st.tuples(st.integers(min_value=0, max_value=len(_HELLO) - 1), st.integers(0, 255)),
                            min_size=1, max_size=4),
           cut=st.integers(min_value=0, max_value=len(_HELLO)))
    def test_mangled(self, changes, cut):
        """Bytes changed anywhere, and cut anywhere: a hello, a wait for more, or ClientHelloError; nothing else."""
        data = bytearray(_HELLO)
        for position, value in changes:
            data[position] = value
        try:
            parse_client_hello(bytes(data[:cut]))
        except ClientHelloError:
            pass
