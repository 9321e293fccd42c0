"""
HAProxy PROXY protocol headers, version 1 (text) and version 2 (binary):
the encoder.

The proxy writes one of these first on an upstream connection so the
upstream learns the client's real address (and, with v2, the SNI host and
the negotiated ALPN protocol). Receiving PROXY headers from a load balancer
in front is Twisted's ``haproxy:`` endpoint prefix
(:mod:`twisted.protocols.haproxy`); the decoder the tests check these
headers with lives in ``tests/proxyproto_decoder.py``.

Spec: https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt
(sections 2.1, 2.2 and 2.2.1–2.2.2).
"""

from __future__ import annotations

import ipaddress
import struct

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IAddress

#: The 12-byte block every v2 header starts with (spec 2.2).
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"

#: TLV types (spec 2.2).
PP2_TYPE_ALPN = 0x01
PP2_TYPE_AUTHORITY = 0x02

#: The version and command byte's halves (spec 2.2).
V2_VERSION = 0x20
V2_COMMAND_LOCAL = 0x00
V2_COMMAND_PROXY = 0x01

_IP = ipaddress.IPv4Address | ipaddress.IPv6Address


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
    return V2_SIGNATURE + struct.pack("!BBH", V2_VERSION | V2_COMMAND_PROXY, family, len(body)) + body


__all__ = ["PP2_TYPE_ALPN", "PP2_TYPE_AUTHORITY", "V2_SIGNATURE", "v1_header", "v2_header"]
