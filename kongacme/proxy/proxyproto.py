"""
HAProxy PROXY protocol headers, version 1 (text) and version 2 (binary).

The proxy writes one of these first on an upstream connection so the
upstream learns the client's real address (and, with v2, the SNI host and
the negotiated ALPN protocol). The decoder is strict — a receiver must never
guess — and is used by the tests and for accepting PROXY from a load
balancer.

Spec: https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt
(sections 2.1, 2.2 and 2.2.1–2.2.2).
"""

from __future__ import annotations

import ipaddress
import re
import struct

import attrs
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.interfaces import IAddress

#: The 12-byte block every v2 header starts with (spec 2.2).
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"

#: TLV types (spec 2.2).
PP2_TYPE_ALPN = 0x01
PP2_TYPE_AUTHORITY = 0x02

_V1_PREFIX = b"PROXY "
# A v1 line, CRLF included, is never longer than this (spec 2.1).
_V1_MAX_LINE = 107

_V2_VERSION = 0x20
_V2_LOCAL = 0x00
_V2_PROXY = 0x01

# Family/transport byte → (name, address block length).
_V2_FAMILIES = {
    0x00: ("UNKNOWN", 0),
    0x11: ("TCP4", 12),
    0x12: ("UDP4", 12),
    0x21: ("TCP6", 36),
    0x22: ("UDP6", 36),
    0x31: ("UNIX", 216),
    0x32: ("UNIX_DGRAM", 216),
}

_IP = ipaddress.IPv4Address | ipaddress.IPv6Address

_V1_PORT = re.compile(r"0|[1-9][0-9]{0,4}")


@attrs.frozen
class ParsedHeader:
    """
    A decoded PROXY protocol header.

    :ivar version: 1 or 2.
    :ivar command: ``"PROXY"``, or ``"LOCAL"`` (v2 health checks: use the
        real connection's addresses).
    :ivar family: ``"TCP4"``, ``"TCP6"`` or ``"UNKNOWN"``; v2 may also say
        ``"UDP4"``, ``"UDP6"``, ``"UNIX"`` or ``"UNIX_DGRAM"``.
    :ivar source: the client's address (``IPv4Address``, ``IPv6Address`` or
        ``UNIXAddress``), or ``None`` when the header carries none.
    :ivar destination: the address the client connected to, likewise.
    :ivar tlvs: v2 type-length-value extensions, ``(type, value)`` pairs in
        wire order.
    """

    version: int
    command: str
    family: str
    source: IAddress | None = None
    destination: IAddress | None = None
    tlvs: tuple[tuple[int, bytes], ...] = ()

    def tlv(self, kind: int) -> bytes | None:
        """
        :return: the value of the first TLV of type ``kind``, or ``None``.
        """
        for found, value in self.tlvs:
            if found == kind:
                return value
        return None

    @property
    def alpn(self) -> bytes | None:
        """The ``PP2_TYPE_ALPN`` value, or ``None``."""
        return self.tlv(PP2_TYPE_ALPN)

    @property
    def authority(self) -> str | None:
        """The ``PP2_TYPE_AUTHORITY`` value (the SNI host), or ``None``."""
        value = self.tlv(PP2_TYPE_AUTHORITY)
        return None if value is None else value.decode("utf-8", "replace")


# -- encoding ----------------------------------------------------------------


def _ip_pair(source: IAddress, destination: IAddress) -> tuple[int, _IP, _IP] | None:
    """
    Both endpoints as IP addresses of one family, or ``None`` if either is
    not an IP (TCP) address.

    A dual-stack listener reports IPv4 clients as ``::ffff:a.b.c.d``; those
    are sent as plain IPv4 so the upstream logs the address people expect.
    A genuine IPv4/IPv6 mix is sent as IPv6, mapping the IPv4 side.
    """
    ips = []
    for address in (source, destination):
        if not isinstance(address, (IPv4Address, IPv6Address)):
            return None
        try:
            ip = ipaddress.ip_address(address.host.split("%", 1)[0])
        except ValueError:
            return None
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        ips.append(ip)
    src, dst = ips
    if src.version == dst.version:
        return src.version, src, dst
    src, dst = (ip if ip.version == 6 else ipaddress.IPv6Address(f"::ffff:{ip}") for ip in ips)
    return 6, src, dst


def v1_header(source: IAddress, destination: IAddress) -> bytes:
    """
    A version 1 (text) header.

    :param source: the client's address (the proxy's peer).
    :param destination: the address the client connected to.
    :return: ``b"PROXY TCP4 <src> <dst> <sport> <dport>\\r\\n"`` (or
        ``TCP6``), or ``b"PROXY UNKNOWN\\r\\n"`` when either address is not
        an IP address.
    """
    pair = _ip_pair(source, destination)
    if pair is None:
        return b"PROXY UNKNOWN\r\n"
    version, src, dst = pair
    line = f"PROXY TCP{version} {src} {dst} {source.port} {destination.port}\r\n"  # type: ignore[attr-defined]
    return line.encode("ascii")


def _tlv(kind: int, value: bytes) -> bytes:
    if len(value) > 0xFFFF:
        raise ValueError(f"TLV {kind:#x} value is {len(value)} bytes, at most 65535 allowed")
    return struct.pack("!BH", kind, len(value)) + value


def v2_header(
    source: IAddress,
    destination: IAddress,
    server_name: str | None = None,
    alpn: bytes | None = None,
) -> bytes:
    """
    A version 2 (binary) header with the PROXY command.

    :param source: the client's address (the proxy's peer).
    :param destination: the address the client connected to.
    :param server_name: the SNI host, sent as ``PP2_TYPE_AUTHORITY``.
    :param alpn: the negotiated ALPN protocol, sent as ``PP2_TYPE_ALPN``.
    :return: the header. Non-IP addresses are sent as ``AF_UNSPEC`` with no
        address block (the upstream then uses the connection's own
        addresses), still with the TLVs.
    """
    pair = _ip_pair(source, destination)
    if pair is None:
        family, addresses = 0x00, b""
    else:
        version, src, dst = pair
        family = 0x11 if version == 4 else 0x21
        addresses = src.packed + dst.packed + struct.pack("!HH", source.port, destination.port)  # type: ignore[attr-defined]
    tlvs = b""
    if alpn:
        tlvs += _tlv(PP2_TYPE_ALPN, alpn)
    if server_name:
        tlvs += _tlv(PP2_TYPE_AUTHORITY, server_name.encode("utf-8"))
    body = addresses + tlvs
    if len(body) > 0xFFFF:
        raise ValueError("PROXY v2 header too long")
    return V2_SIGNATURE + struct.pack("!BBH", _V2_VERSION | _V2_PROXY, family, len(body)) + body


# -- decoding ----------------------------------------------------------------


def parse_header(data: bytes) -> tuple[ParsedHeader, bytes] | None:
    """
    Decode the PROXY header at the start of ``data``.

    :param data: the first bytes received on a connection.
    :return: ``(header, rest)`` where ``rest`` is what follows the header,
        or ``None`` when ``data`` is a valid but incomplete start of a
        header (read more and call again).
    :raises ValueError: if ``data`` does not start with a valid v1 or v2
        header (the connection should be dropped).
    """
    n = min(len(data), len(V2_SIGNATURE))
    if data[:n] == V2_SIGNATURE[:n] and n:
        return _parse_v2(data)
    n = min(len(data), len(_V1_PREFIX))
    if data[:n] == _V1_PREFIX[:n]:
        return _parse_v1(data) if n == len(_V1_PREFIX) else None
    raise ValueError("not a PROXY protocol header")


def _parse_v1(data: bytes) -> tuple[ParsedHeader, bytes] | None:
    end = data.find(b"\r\n", 0, _V1_MAX_LINE)
    if end == -1:
        # A lone CR or LF must not end the line (spec 2.1).
        # (A CR as the very last byte may be the first half of a CRLF.)
        window = data[:_V1_MAX_LINE]
        if len(data) >= _V1_MAX_LINE or b"\n" in window or b"\r" in window[:-1]:
            raise ValueError("PROXY v1 line has no CRLF in its first 107 bytes")
        return None
    try:
        line = data[len(_V1_PREFIX) : end].decode("ascii")
    except UnicodeDecodeError:
        raise ValueError("PROXY v1 line is not ASCII") from None
    rest = data[end + 2 :]
    parts = line.split(" ")
    if parts[0] == "UNKNOWN":
        # The receiver ignores whatever follows UNKNOWN (spec 2.1).
        return ParsedHeader(1, "PROXY", "UNKNOWN"), rest
    if parts[0] not in ("TCP4", "TCP6") or len(parts) != 5:
        raise ValueError(f"malformed PROXY v1 line {line[:60]!r}")
    family, src, dst, sport, dport = parts
    make = IPv4Address if family == "TCP4" else IPv6Address
    kind = ipaddress.IPv4Address if family == "TCP4" else ipaddress.IPv6Address
    addresses = []
    for host, port in ((src, sport), (dst, dport)):
        try:
            kind(host)  # rejects octal-looking leading zeros and scopes
        except ValueError:
            raise ValueError(f"bad {family} address {host!r} in PROXY v1 line") from None
        if "%" in host or not _V1_PORT.fullmatch(port) or int(port) > 65535:
            raise ValueError(f"bad address or port {host!r} {port!r} in PROXY v1 line")
        addresses.append(make("TCP", host, int(port)))
    return ParsedHeader(1, "PROXY", family, addresses[0], addresses[1]), rest


def _parse_v2(data: bytes) -> tuple[ParsedHeader, bytes] | None:
    if len(data) > 12:
        if data[12] >> 4 != 2:
            raise ValueError(f"unsupported PROXY protocol version {data[12] >> 4}")
        if data[12] & 0x0F not in (_V2_LOCAL, _V2_PROXY):
            raise ValueError(f"unknown PROXY v2 command {data[12] & 0x0F:#x}")
    if len(data) > 13 and data[13] not in _V2_FAMILIES:
        raise ValueError(f"unknown PROXY v2 address family {data[13]:#04x}")
    if len(data) < 16:
        return None
    (length,) = struct.unpack_from("!H", data, 14)
    if len(data) < 16 + length:
        return None
    command = "LOCAL" if data[12] & 0x0F == _V2_LOCAL else "PROXY"
    family, address_length = _V2_FAMILIES[data[13]]
    body = data[16 : 16 + length]
    if len(body) < address_length:
        raise ValueError(f"PROXY v2 {family} header needs {address_length} address bytes, has {len(body)}")
    source = destination = None
    if command == "PROXY":
        source, destination = _v2_addresses(family, body[:address_length])
    return ParsedHeader(2, command, family, source, destination, _parse_tlvs(body[address_length:])), data[16 + length :]


def _v2_addresses(family: str, block: bytes) -> tuple[IAddress | None, IAddress | None]:
    if family in ("TCP4", "UDP4", "TCP6", "UDP6"):
        size = 4 if family.endswith("4") else 16
        src = ipaddress.ip_address(block[:size])
        dst = ipaddress.ip_address(block[size : 2 * size])
        sport, dport = struct.unpack_from("!HH", block, 2 * size)
        make = IPv4Address if size == 4 else IPv6Address
        kind = "TCP" if family.startswith("TCP") else "UDP"
        return make(kind, str(src), sport), make(kind, str(dst), dport)
    if family.startswith("UNIX"):
        return (UNIXAddress(block[:108].split(b"\x00", 1)[0]), UNIXAddress(block[108:].split(b"\x00", 1)[0]))
    return None, None


def _parse_tlvs(block: bytes) -> tuple[tuple[int, bytes], ...]:
    tlvs = []
    offset = 0
    while offset < len(block):
        if len(block) - offset < 3:
            raise ValueError("truncated TLV in PROXY v2 header")
        kind, length = struct.unpack_from("!BH", block, offset)
        offset += 3
        if offset + length > len(block):
            raise ValueError(f"TLV {kind:#x} overruns the PROXY v2 header")
        tlvs.append((kind, block[offset : offset + length]))
        offset += length
    return tuple(tlvs)
