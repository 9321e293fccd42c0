"""
Tests for kongacme.proxy.proxyproto (the encoder) and for
tests.proxyproto_decoder, the decoder the tests read its headers with.
"""

from __future__ import annotations

import struct

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.trial import unittest

from kongacme.proxy.proxyproto import PP2_TYPE_ALPN, PP2_TYPE_AUTHORITY, V2_SIGNATURE, v1_header, v2_header
from tests.proxyproto_decoder import ParsedHeader, parse_header

SRC4 = IPv4Address("TCP", "192.168.0.1", 56324)
DST4 = IPv4Address("TCP", "192.168.0.11", 443)
SRC6 = IPv6Address("TCP", "2001:db8::1", 40000)
DST6 = IPv6Address("TCP", "2001:db8::ffff", 443)


class V1HeaderTests(unittest.SynchronousTestCase):
    """
    Tests for v1_header.
    """

    def test_tcp4(self) -> None:
        """
        IPv4 endpoints give the spec's example line.
        """
        self.assertEqual(v1_header(SRC4, DST4), b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n")

    def test_tcp6(self) -> None:
        """
        IPv6 endpoints give a TCP6 line with compressed addresses.
        """
        self.assertEqual(v1_header(SRC6, DST6), b"PROXY TCP6 2001:db8::1 2001:db8::ffff 40000 443\r\n")

    def test_scope_dropped(self) -> None:
        """
        A link-local scope ("%eth0") is not part of the address on the wire.
        """
        header = v1_header(IPv6Address("TCP", "fe80::1%eth0", 1), IPv6Address("TCP", "fe80::2%eth0", 2))
        self.assertEqual(header, b"PROXY TCP6 fe80::1 fe80::2 1 2\r\n")

    def test_v4_mapped(self) -> None:
        """
        IPv4 clients of a dual-stack listener (``::ffff:a.b.c.d``) are sent as
        TCP4.
        """
        header = v1_header(IPv6Address("TCP", "::ffff:10.0.0.1", 5000), IPv6Address("TCP", "::ffff:10.0.0.2", 443))
        self.assertEqual(header, b"PROXY TCP4 10.0.0.1 10.0.0.2 5000 443\r\n")

    def test_mixed_families(self) -> None:
        """
        An IPv4 endpoint with an IPv6 one is sent as TCP6, the IPv4 address
        mapped.
        """
        header, _ = parse_header(v1_header(SRC4, DST6))  # type: ignore[misc]
        self.assertEqual(header.family, "TCP6")
        self.assertEqual(header.source, IPv6Address("TCP", "::ffff:c0a8:1", 56324))
        self.assertEqual(header.destination, DST6)

    def test_unknown(self) -> None:
        """
        Non-IP addresses give the short UNKNOWN line.
        """
        self.assertEqual(v1_header(UNIXAddress(b"/tmp/sock"), DST4), b"PROXY UNKNOWN\r\n")
        self.assertEqual(v1_header(SRC4, UNIXAddress(None)), b"PROXY UNKNOWN\r\n")

    def test_fits_limit(self) -> None:
        """
        The longest possible line is within the spec's 107 bytes.
        """
        full = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe"
        header = v1_header(IPv6Address("TCP", full, 65535), IPv6Address("TCP", full, 65535))
        self.assertEqual(len(header), 104)


class V2HeaderTests(unittest.SynchronousTestCase):
    """
    Tests for v2_header.
    """

    def test_tcp4_layout(self) -> None:
        """
        An IPv4 header is the signature, 0x21 (v2, PROXY), 0x11 (TCP over
        IPv4), length 12, addresses then ports in network order.
        """
        header = v2_header(SRC4, DST4)
        self.assertEqual(
            header,
            V2_SIGNATURE
            + b"\x21\x11\x00\x0c"
            + bytes([192, 168, 0, 1, 192, 168, 0, 11])
            + struct.pack("!HH", 56324, 443),
        )

    def test_tcp6_layout(self) -> None:
        """
        An IPv6 header uses family 0x21 and a 36-byte address block.
        """
        header = v2_header(SRC6, DST6)
        self.assertEqual(header[12:16], b"\x21\x21\x00\x24")
        self.assertEqual(len(header), 16 + 36)

    def test_tlvs(self) -> None:
        """
        ALPN and the SNI host are sent as PP2_TYPE_ALPN and
        PP2_TYPE_AUTHORITY TLVs, counted in the length.
        """
        header = v2_header(SRC4, DST4, server_name="app.example.com", alpn=b"h2")
        tlvs = b"\x01\x00\x02h2" + b"\x02\x00\x0fapp.example.com"
        self.assertEqual(header[14:16], struct.pack("!H", 12 + len(tlvs)))
        self.assertTrue(header.endswith(tlvs))

    def test_unix_is_unspec(self) -> None:
        """
        Non-IP endpoints are sent with the PROXY command, AF_UNSPEC and no
        address block, TLVs kept.
        """
        header = v2_header(UNIXAddress(b"/a"), UNIXAddress(b"/b"), server_name="x.org")
        self.assertEqual(header, V2_SIGNATURE + b"\x21\x00\x00\x08" + b"\x02\x00\x05x.org")
        parsed, rest = parse_header(header)  # type: ignore[misc]
        self.assertEqual((parsed.family, parsed.source, parsed.authority, rest), ("UNKNOWN", None, "x.org", b""))


class ParseHeaderTests(unittest.SynchronousTestCase):
    """
    Tests for parse_header.
    """

    def test_v1_round_trip(self) -> None:
        """
        A v1 header parses back to its addresses; what follows is returned.
        """
        parsed, rest = parse_header(v1_header(SRC4, DST4) + b"GET / HTTP/1.1\r\n")  # type: ignore[misc]
        self.assertEqual(parsed, ParsedHeader(1, "PROXY", "TCP4", SRC4, DST4))
        self.assertEqual(rest, b"GET / HTTP/1.1\r\n")
        parsed, rest = parse_header(v1_header(SRC6, DST6))  # type: ignore[misc]
        self.assertEqual((parsed.family, parsed.source, parsed.destination), ("TCP6", SRC6, DST6))

    def test_v1_unknown(self) -> None:
        """
        An UNKNOWN line, short or with ignored fields, parses without
        addresses.
        """
        for line in (b"PROXY UNKNOWN\r\n", b"PROXY UNKNOWN ffff::1 ffff::2 65535 65535\r\n"):
            parsed, rest = parse_header(line + b"x")  # type: ignore[misc]
            self.assertEqual((parsed.family, parsed.source, rest), ("UNKNOWN", None, b"x"))

    def test_v2_round_trip(self) -> None:
        """
        A v2 header with TLVs parses back to addresses, SNI and ALPN.
        """
        header = v2_header(SRC6, DST6, server_name="app.example.com", alpn=b"http/1.1")
        parsed, rest = parse_header(header + b"\x16\x03\x01")  # type: ignore[misc]
        self.assertEqual((parsed.version, parsed.command, parsed.family), (2, "PROXY", "TCP6"))
        self.assertEqual((parsed.source, parsed.destination), (SRC6, DST6))
        self.assertEqual(parsed.authority, "app.example.com")
        self.assertEqual(parsed.alpn, b"http/1.1")
        self.assertEqual(parsed.tlv(PP2_TYPE_ALPN), b"http/1.1")
        self.assertIsNone(parsed.tlv(0x30))
        self.assertEqual([kind for kind, _ in parsed.tlvs], [PP2_TYPE_ALPN, PP2_TYPE_AUTHORITY])
        self.assertEqual(rest, b"\x16\x03\x01")

    def test_v2_local(self) -> None:
        """
        A LOCAL header (a health check) carries no addresses even when the
        block is present.
        """
        header = V2_SIGNATURE + b"\x20\x11\x00\x0c" + b"\x00" * 12
        parsed, rest = parse_header(header)  # type: ignore[misc]
        self.assertEqual((parsed.command, parsed.source, parsed.destination, rest), ("LOCAL", None, None, b""))

    def test_v2_unknown_tlv_kept(self) -> None:
        """
        TLVs the decoder does not know are kept, in order.
        """
        header = V2_SIGNATURE + b"\x21\x00\x00\x07" + b"\xe0\x00\x01z" + b"\x04\x00\x00"
        parsed, _ = parse_header(header)  # type: ignore[misc]
        self.assertEqual(parsed.tlvs, ((0xE0, b"z"), (0x04, b"")))

    def test_incomplete(self) -> None:
        """
        Every proper prefix of a valid header is "incomplete" (None), not an
        error.
        """
        for header in (v1_header(SRC4, DST4), v2_header(SRC4, DST4, "a.org", b"h2")):
            for n in range(len(header)):
                self.assertIsNone(parse_header(header[:n]), header[:n])

    def test_garbage(self) -> None:
        """
        Anything that is not a valid header raises ValueError.
        """
        garbage = [
            b"GET / HTTP/1.1\r\n",
            b"\x16\x03\x01\x02\x00",
            b"PROXYTCP4",
            b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
            b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n",
            b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n",
            b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n",
            b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 \xff\r\n",
            b"PROXY " + b"A" * 120,
            V2_SIGNATURE + b"\x11\x11\x00\x0c",  # version 1 in a v2 header
            V2_SIGNATURE + b"\x22\x11\x00\x0c",  # command 2
            V2_SIGNATURE + b"\x21\x13\x00\x0c",  # transport 3
            V2_SIGNATURE + b"\x21\x41\x00\x0c",  # family 4
            V2_SIGNATURE + b"\x21\x11\x00\x04" + b"\x00" * 4,  # address block too short
            V2_SIGNATURE + b"\x21\x00\x00\x02" + b"\x01\x00",  # truncated TLV
            V2_SIGNATURE + b"\x21\x00\x00\x04" + b"\x01\x00\x05x",  # TLV overruns
            b"\r\n\r\nX",
        ]
        for data in garbage:
            self.assertRaises(ValueError, parse_header, data)

    def test_cr_at_end_is_incomplete(self) -> None:
        """
        A line ending in a bare CR may still get its LF: not an error yet.
        """
        self.assertIsNone(parse_header(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r"))
