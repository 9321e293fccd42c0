"""
A strict decoder of HAProxy PROXY protocol headers, version 1 (text) and
version 2 (binary), for the tests: they read the header kongacme sends
upstream with it. A receiver must never guess, so it refuses anything the
spec does not allow.

kongacme itself receives PROXY headers through Twisted's ``haproxy:``
endpoint prefix, not through this.

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

from kongacme.proxy.proxyproto import (
    PP2_TYPE_ALPN,
    PP2_TYPE_AUTHORITY,
    V2_COMMAND_LOCAL,
    V2_COMMAND_PROXY,
    V2_SIGNATURE,
)

_V1_PREFIX = b"PROXY "
# A v1 line, CRLF included, is never longer than this (spec 2.1).
_V1_MAX_LINE = 107

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
        if data[12] & 0x0F not in (V2_COMMAND_LOCAL, V2_COMMAND_PROXY):
            raise ValueError(f"unknown PROXY v2 command {data[12] & 0x0F:#x}")
    if len(data) > 13 and data[13] not in _V2_FAMILIES:
        raise ValueError(f"unknown PROXY v2 address family {data[13]:#04x}")
    if len(data) < 16:
        return None
    (length,) = struct.unpack_from("!H", data, 14)
    if len(data) < 16 + length:
        return None
    command = "LOCAL" if data[12] & 0x0F == V2_COMMAND_LOCAL else "PROXY"
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
