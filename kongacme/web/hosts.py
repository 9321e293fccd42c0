"""
Validating the ``Host`` header of a plain-HTTP request.

A ``Host`` value ends up in a ``Location`` header (redirect mode) and picks a
route (proxy mode), so it is checked strictly: a DNS host name, an IPv4
literal or a bracketed IPv6 literal, optionally followed by ``:port``.
Anything else (CR, LF, spaces, user info, paths, non-ASCII, over-long
values) is refused rather than escaped.
"""

from __future__ import annotations

import ipaddress
import re

import attrs

#: Longest ``Host`` value looked at: a 253-octet name plus ``:65535``, with
#: room to spare for an IPv6 literal's brackets.
MAX_HOST_HEADER = 270

_LABEL = re.compile(rb"(?!-)[a-z0-9_-]{1,63}(?<!-)")
_PORT = re.compile(rb"[0-9]{1,5}")
_IPV6_CHARS = re.compile(rb"[0-9a-f:.]{2,45}")


@attrs.frozen
class HostHeader:
    """
    A validated ``Host`` header.

    :ivar name: lower-cased host name or IP literal, IPv6 without brackets
        and without a trailing dot (what a router is asked about).
    :ivar port: the port the client named, or ``None``.
    """

    name: str
    port: int | None

    @property
    def url_host(self) -> str:
        """
        :attr:`name` as it goes into a URL's authority (IPv6 in brackets).
        """
        return f"[{self.name}]" if ":" in self.name else self.name


def parse_host_header(raw: bytes | None) -> HostHeader | None:
    """
    Validate a ``Host`` header value.

    :param raw: the header value as received, or ``None`` when absent.
    :return: the parsed value, or ``None`` when it is missing or invalid.
    """
    if not raw or len(raw) > MAX_HOST_HEADER:
        return None
    raw = raw.lower()
    if raw.startswith(b"["):
        end = raw.find(b"]")
        if end < 0:
            return None
        host, rest = raw[1:end], raw[end + 1 :]
        if not _IPV6_CHARS.fullmatch(host):
            # ipaddress accepts "::1%<anything>" (a zone id); a URL host may
            # not carry one unescaped, and a client has no use for it.
            return None
        try:
            name = str(ipaddress.IPv6Address(host.decode("ascii")))
        except (UnicodeDecodeError, ValueError):
            return None
    else:
        host, colon, port_part = raw.partition(b":")
        rest = colon + port_part
        name_or_none = _parse_name(host)
        if name_or_none is None:
            return None
        name = name_or_none
    port: int | None = None
    if rest:
        if not rest.startswith(b":") or not _PORT.fullmatch(rest[1:]):
            return None
        port = int(rest[1:])
        if not 0 < port < 65536:
            return None
    return HostHeader(name, port)


def _parse_name(host: bytes) -> str | None:
    """
    Validate an IPv4 literal or a DNS host name (already lower-cased).
    """
    if host.endswith(b"."):
        host = host[:-1]
    if not host or len(host) > 253:
        return None
    labels = host.split(b".")
    if not all(_LABEL.fullmatch(label) for label in labels):
        return None
    text = host.decode("ascii")
    if labels[-1].isdigit():
        # An all-numeric last label is only acceptable as a dotted-quad IPv4
        # literal; "999.1.1.1" or "1.2.3" are neither addresses nor names.
        try:
            return str(ipaddress.IPv4Address(text))
        except ValueError:
            return None
    return text
