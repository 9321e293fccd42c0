"""
Tests for kongacme.tls.clienthello.
"""

import ssl

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from kongacme.errors import ClientHelloError
from kongacme.tls import clienthello
from kongacme.tls.clienthello import normalize_server_name, parse_client_hello

from tests.clienthellos import append_extension, append_sni_extension, client_hello_bytes, with_raw_sni


#: Why the compiled reader's tests are skipped, or None.
NOT_COMPILED = None if clienthello._compiled_parse is not None else "kongacme.tls._clienthello is not built"

#: The property suites run once per reader (a subclass each): the same test from two classes.
ONE_TEST_TWO_READERS = [HealthCheck.differing_executors]


class PythonReaderMixin:
    """Run a suite on the Python reader (``clienthello._parse_parts``) instead of the compiled one."""

    def setUp(self):
        super().setUp()
        self.patch(clienthello, "_parse", clienthello._parse_parts)


class ParseClientHelloTests(SynchronousTestCase):
    """
    Tests for parse_client_hello (on the compiled reader where it is built).
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


class ParseClientHelloPythonTests(PythonReaderMixin, ParseClientHelloTests):
    """The same on the Python reader."""


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


@st.composite
def _mangled(draw):
    """A real hello with one to six bytes changed anywhere, cut anywhere."""
    data = bytearray(_HELLO)
    for position, value in draw(st.lists(st.tuples(st.integers(0, len(_HELLO) - 1), st.integers(0, 255)),
                                         min_size=1, max_size=6)):
        data[position] = value
    return bytes(data[:draw(st.integers(min_value=0, max_value=len(_HELLO)))])


_MANGLED = _mangled()


class ParseClientHelloPropertyTests(SynchronousTestCase):
    """
    Properties of parse_client_hello: its one-record shortcut and the
    record-by-record reassembly agree, and no input breaks it.
    """

    @settings(max_examples=300, deadline=None, suppress_health_check=ONE_TEST_TWO_READERS)
    @given(cuts=st.lists(st.integers(min_value=1, max_value=4096), max_size=6), extra=st.binary(max_size=64))
    def test_any_fragmentation(self, cuts, extra):
        """However the ClientHello is cut into records (and whatever follows it), it parses the same."""
        whole = parse_client_hello(_HELLO)
        self.assertEqual(parse_client_hello(_records(_HELLO[5:], cuts) + extra), whole)
        self.assertEqual(whole.server_name, "any.split.test")

    @settings(max_examples=500, deadline=None, suppress_health_check=ONE_TEST_TWO_READERS)
    @given(data=_MANGLED)
    def test_mangled(self, data):
        """Bytes changed anywhere, and cut anywhere: a hello, a wait for more, or ClientHelloError; nothing else."""
        try:
            parse_client_hello(data)
        except ClientHelloError:
            pass


class ParseClientHelloPropertyPythonTests(PythonReaderMixin, ParseClientHelloPropertyTests):
    """The same on the Python reader."""


def _outcome(read, data, size=-1):
    """What a reader makes of ``data``: its result, or the ClientHelloError's message (anything else is raised)."""
    try:
        return ("read", read(data, size))
    except ClientHelloError as e:
        return ("refused", str(e))


def _vector(draw, width, items):
    """``items`` joined behind their length in ``width`` bytes."""
    body = b"".join(items)
    return len(body).to_bytes(width, "big") + body


@st.composite
def _extension(draw):
    """One extension: a well-formed server_name, ALPN or supported_versions body, or any type and bytes."""
    kind = draw(st.sampled_from(("sni", "alpn", "versions", "any")))
    if kind == "sni":
        entries = draw(st.lists(st.tuples(st.integers(0, 2), st.binary(max_size=40)), max_size=3))
        body = _vector(draw, 2, [bytes([t]) + len(n).to_bytes(2, "big") + n for t, n in entries])
        return 0, body
    if kind == "alpn":
        names = draw(st.lists(st.binary(max_size=12), max_size=4))
        return 16, _vector(draw, 2, [bytes([len(n)]) + n for n in names])
    if kind == "versions":
        versions = draw(st.lists(st.sampled_from((b"\x03\x04", b"\x03\x03", b"\x7f\x1c", b"\x03")), max_size=4))
        return 43, _vector(draw, 1, versions)
    return draw(st.sampled_from((0, 16, 43, 10, 13, 51, 0xFFFF))), draw(st.binary(max_size=24))


@st.composite
def _hello_stream(draw):
    """
    A ClientHello built from drawn parts (any extensions, duplicates
    included), in records cut anywhere, then bytes changed anywhere and the
    stream cut anywhere: well-formed, truncated and lying lengths alike.
    """
    if draw(st.integers(0, 9)):
        extensions = draw(st.lists(_extension(), max_size=6, unique_by=lambda extension: extension[0]))
    else:
        extensions = draw(st.lists(_extension(), max_size=6))  # duplicates, likely
    body = (
        b"\x03\x03" + draw(st.binary(min_size=32, max_size=32))
        + _vector(draw, 1, [draw(st.binary(max_size=32))])
        + _vector(draw, 2, draw(st.lists(st.sampled_from((b"\x13\x01", b"\xc0\x2b")), min_size=1, max_size=3)))
        + _vector(draw, 1, [b"\x00"])
    )
    if draw(st.booleans()) or extensions:
        body += _vector(draw, 2, [t.to_bytes(2, "big") + len(b).to_bytes(2, "big") + b for t, b in extensions])
    body += draw(st.binary(max_size=4))
    message = b"\x01" + len(body).to_bytes(3, "big") + body
    cuts = draw(st.lists(st.integers(min_value=1, max_value=len(message)), max_size=3))
    data = bytearray(_records(message, cuts))
    if draw(st.booleans()):
        for position, value in draw(st.lists(st.tuples(st.integers(0, len(data) - 1), st.integers(0, 255)),
                                             min_size=1, max_size=3)):
            data[position] = value
    if draw(st.booleans()):
        data = data[:draw(st.integers(min_value=0, max_value=len(data)))]
    return bytes(data) + draw(st.binary(max_size=8))


class CompiledReaderTests(SynchronousTestCase):
    """
    The compiled reader (kongacme/tls/_clienthello.c) against the Python
    one, its reference: on any bytes, the same hello, the same wait for
    more, or the same refusal with the same message.
    """

    skip = NOT_COMPILED

    def assertSameReading(self, data):
        python = _outcome(clienthello._parse_parts, data)
        self.assertEqual(_outcome(clienthello._compiled_parse, data), python)
        # A longer buffer read up to a size (the engine's peek buffer) reads the same.
        self.assertEqual(_outcome(clienthello._compiled_parse, bytearray(data) + b"\x16" * 7, len(data)), python)
        return python

    def test_real_hellos(self):
        """What OpenSSL clients send, in one record or cut into several, reads the same."""
        for hello in (_HELLO, client_hello_bytes(), client_hello_bytes("a.test", max_version=ssl.TLSVersion.TLSv1_2),
                      with_raw_sni(b"a\x00b.test"), with_raw_sni(b"x" * 2000)):
            kind, parts = self.assertSameReading(hello)
            self.assertEqual(kind, "read")
            self.assertIsNotNone(parts)
            self.assertSameReading(_records(hello[5:], [7, 100, 300]))

    def test_every_prefix(self):
        """Every prefix of a real hello (in one record and in three) reads the same: a wait, then the hello."""
        for data in (_HELLO, _records(_HELLO[5:], [3, 90])):
            for cut in range(len(data) + 1):
                self.assertSameReading(data[:cut])

    def test_refusals(self):
        """Each way a hello is refused gives the Python reader's message."""
        oversized = b"\x16\x03\x01\x40\x00" + b"\x01\x10\x00\x00" + b"\x00" * 100
        duplicate = append_sni_extension(client_hello_bytes("a.test"), b"b.test")
        seen = {self.assertSameReading(data)[1] for data in (
            b"GET / HTTP/1.1\r\n\r\n", b"\x16\x02", b"\x16\x03\x01\x00\x00", oversized, duplicate,
            b"\x16\x03\x01\x00\x08" + b"\x02\x00\x00\x04" + b"\x03\x03\x00\x00",
            append_extension(client_hello_bytes(), 16, b"\x00\x05\x03h2"),
            append_extension(client_hello_bytes(), 0, b"\x00\x01\x00"),
        )}
        self.assertEqual(seen, {
            "not a TLS handshake record", "bad TLS record length", "ClientHello too large",
            "duplicate extension 0", "first handshake message is not a ClientHello",
            "bad ALPN extension", "bad server_name extension",
        })

    def test_argument_shapes(self):
        """bytes, bytearray and memoryview are read; ``size`` bounds what is read; anything else is a TypeError."""
        expected = clienthello._parse_parts(_HELLO)
        self.assertEqual(clienthello._compiled_parse(memoryview(_HELLO)), expected)
        self.assertEqual(clienthello._compiled_parse(bytearray(_HELLO) + b"junk", len(_HELLO)), expected)
        self.assertIsNone(clienthello._compiled_parse(_HELLO, 10))
        self.assertEqual(clienthello._compiled_parse(_HELLO, 10 ** 6), expected)
        self.assertRaises(TypeError, clienthello._compiled_parse, "text")
        self.assertRaises(TypeError, clienthello._compiled_parse)
        self.assertRaises(TypeError, clienthello._compiled_parse, _HELLO, 1, 2)

    @settings(max_examples=3000, deadline=None)
    @given(data=_hello_stream())
    def test_built_hellos(self, data):
        """Hellos built from any parts, cut and changed anywhere: the same reading."""
        self.assertSameReading(data)

    @settings(max_examples=1000, deadline=None)
    @given(data=st.binary(max_size=600))
    def test_any_bytes(self, data):
        """Any bytes at all: the same reading."""
        self.assertSameReading(data)

    @settings(max_examples=1000, deadline=None)
    @given(data=_MANGLED)
    def test_mangled_real_hello(self, data):
        """A real hello with bytes changed anywhere and cut anywhere: the same reading."""
        self.assertSameReading(data)

    def test_large_hellos(self):
        """Near and past the size limit, in records of 16 KiB: the same reading (the reassembly's bounds)."""
        for size in (16384, 16385, 32 * 1024 - 4, 32 * 1024 - 3, 40000):
            body = b"\x03\x03" + b"\x00" * 32 + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
            pad = size - 4 - len(body) - 4 - 2
            if pad >= 0:
                body += (pad + 4).to_bytes(2, "big") + b"\x00\x15" + pad.to_bytes(2, "big") + b"\x00" * pad
            message = b"\x01" + len(body).to_bytes(3, "big") + body
            records = _records(message, list(range(16384, len(message), 16384)))
            for cut in (len(records), len(records) - 1, 9, 16384 + 5):
                self.assertSameReading(records[:cut])
