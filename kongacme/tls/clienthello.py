"""
Reading a TLS ClientHello from the first bytes of a connection, before the
TLS engine sees it.

This is what lets the SNI path stay synchronous (house rule 7): the server
name is known before an ``SSL.Connection`` exists, so the right context is
chosen up front and any I/O (on-demand issuance) happens before OpenSSL runs.
Record and handshake layouts: RFC 8446 §5.1 and §4.1.2; SNI: RFC 6066 §3;
ALPN: RFC 7301 §3.1.
"""

from __future__ import annotations

import functools
import re
import struct

import attrs
from zope.interface import implementer

from kongacme.errors import ClientHelloError
from kongacme.interfaces import IConnectionInfo

#: A ClientHello is normally under 2 KiB (a post-quantum key share brings it
#: near 2 KiB); refuse to buffer more than this while waiting for one.
MAX_CLIENT_HELLO = 32 * 1024

_HANDSHAKE = 0x16
_CLIENT_HELLO = 0x01
_EXT_SERVER_NAME = 0
_EXT_ALPN = 16
_EXT_SUPPORTED_VERSIONS = 43

_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")

#: RFC 6066 §3: a HostName is at most 255 bytes (the TLS engine enforces it).
MAX_SNI_BYTES = 255

#: An extension's type and length (RFC 8446 §4.2), in one call.
_EXTENSION_HEAD = struct.Struct(">HH").unpack_from


@implementer(IConnectionInfo)
@attrs.frozen
class ClientHello:
    """
    What kongacme uses from a ClientHello.

    :ivar server_name: the lower-cased SNI host name, or ``None`` when the
        client sent none or sent one that is not a valid host name.
    :ivar alpn_offered: ALPN protocol names offered, in the client's order.
    :ivar raw_server_name: the SNI bytes as sent when they were rejected
        (for the log line), else ``None``.
    :ivar offers_tls13: the client offers TLS 1.3 (``supported_versions``,
        RFC 8446 §4.2.1, holds 0x0304).
    :ivar unservable: why no certificate at all can be served for this
        hello, or ``None``. OpenSSL ends the handshake with an
        ``unrecognized_name`` alert while reading a host_name that holds a
        NUL byte or is longer than 255 bytes; the ClientHello cannot be
        changed before OpenSSL reads it (its bytes are part of the handshake
        transcript both sides sign), so such a hello cannot get even the
        fallback certificate.
    """

    server_name: str | None
    alpn_offered: tuple[bytes, ...] = ()
    raw_server_name: bytes | None = None
    unservable: str | None = None
    offers_tls13: bool = False


@functools.lru_cache(maxsize=1024)
def normalize_server_name(raw: bytes) -> str | None:
    """
    Validate and lower-case an SNI host name; one trailing dot (a fully
    qualified ``demo.test.``) is dropped, so it is looked up as
    ``demo.test``.

    The same few names come in hello after hello: the answers for the last
    1,024 are kept (a label regex per label costs more than the lookup).

    :return: the name, or ``None`` if it is not ASCII, is an empty label
        sequence, longer than 253 octets, or has an invalid label.
    """
    if not raw or len(raw) > 254:
        return None
    try:
        name = raw.decode("ascii").lower()
    except UnicodeDecodeError:
        return None
    if name.endswith("."):
        name = name[:-1]
    if not name or len(name) > 253:
        return None
    for label in name.split("."):
        if not _LABEL.match(label):
            return None
    return name


def _handshake_bytes(buffer: bytes) -> bytes | None:
    """
    Reassemble the first handshake message from one or more TLS records.

    :return: the handshake message (header included), or ``None`` if more
        bytes are needed.
    :raises ClientHelloError: if the bytes are not TLS handshake records.
    """
    if len(buffer) >= 9 and buffer[0] == _HANDSHAKE and buffer[1] == 3 and buffer[5] == _CLIENT_HELLO:
        # The usual case: the first record holds the whole ClientHello.
        record = buffer[3] << 8 | buffer[4]
        whole = 4 + (buffer[6] << 16 | buffer[7] << 8 | buffer[8])
        if whole <= record <= 16384 and len(buffer) >= 5 + record:
            return buffer[5 : 5 + whole]
    message = b""
    pos = 0
    needed: int | None = None
    while True:
        if len(buffer) - pos < 5:
            break
        content_type = buffer[pos]
        major = buffer[pos + 1]
        length = int.from_bytes(buffer[pos + 3 : pos + 5], "big")
        if content_type != _HANDSHAKE or major != 3:
            raise ClientHelloError("not a TLS handshake record")
        if length == 0 or length > 16384:
            raise ClientHelloError("bad TLS record length")
        if len(buffer) - pos - 5 < length:
            if not message and len(buffer) - pos >= 9:
                # Judge the handshake header before the record is complete,
                # so a hostile length is refused without buffering for it.
                head = buffer[pos + 5 : pos + 9]
                if head[0] != _CLIENT_HELLO:
                    raise ClientHelloError("first handshake message is not a ClientHello")
                if 4 + int.from_bytes(head[1:4], "big") > MAX_CLIENT_HELLO:
                    raise ClientHelloError("ClientHello too large")
            break
        message += buffer[pos + 5 : pos + 5 + length]
        pos += 5 + length
        if needed is None and len(message) >= 4:
            if message[0] != _CLIENT_HELLO:
                raise ClientHelloError("first handshake message is not a ClientHello")
            needed = 4 + int.from_bytes(message[1:4], "big")
            if needed > MAX_CLIENT_HELLO:
                raise ClientHelloError("ClientHello too large")
        if needed is not None and len(message) >= needed:
            return message[:needed]
    if len(buffer) > MAX_CLIENT_HELLO + 64:
        raise ClientHelloError("ClientHello too large")
    if len(buffer) >= 1 and buffer[0] != _HANDSHAKE:
        raise ClientHelloError("not a TLS handshake record")
    if len(buffer) >= 2 and buffer[1] != 3:
        raise ClientHelloError("not a TLS handshake record")
    return None


def parse_client_hello(buffer: bytes | bytearray | memoryview, size: int = -1) -> ClientHello | None:
    """
    Parse a ClientHello from the start of a connection's byte stream.

    This runs once per connection on the handshake path: the reading is
    :mod:`kongacme.tls._clienthello` where it is built (about a fifteenth of
    the Python reader's time), else :func:`_parse_parts`, the reference the
    tests hold the compiled one to.

    :param buffer: every byte received so far (only its first ``size``
        bytes when ``size`` is not negative).
    :return: the parsed hello, or ``None`` when more bytes are needed.
    :raises ClientHelloError: when the bytes are not a ClientHello.
    """
    parts = _parse(buffer, size)
    if parts is None:
        return None
    raw_name, alpn, tls13 = parts
    if raw_name is None:
        return ClientHello(server_name=None, alpn_offered=alpn, offers_tls13=tls13)
    server_name = normalize_server_name(raw_name)
    if server_name is not None:
        return ClientHello(server_name=server_name, alpn_offered=alpn, offers_tls13=tls13)
    return ClientHello(
        server_name=None, alpn_offered=alpn, raw_server_name=raw_name, unservable=_unservable(raw_name),
        offers_tls13=tls13,
    )


def _parse_parts(
    buffer: bytes | bytearray | memoryview, size: int = -1
) -> tuple[bytes | None, tuple[bytes, ...], bool] | None:
    """
    The ClientHello reader in Python: the first host_name as sent, the
    ALPN names offered and whether TLS 1.3 is, or ``None`` when more bytes
    are needed. It walks the message with plain index arithmetic (about a
    tenth of the cost of a reader object) and looks only at the
    server_name, ALPN and supported_versions extensions.

    :raises ClientHelloError: when the bytes are not a ClientHello.
    """
    if size >= 0 or not isinstance(buffer, bytes):
        buffer = bytes(buffer[:size] if size >= 0 else buffer)
    message = _handshake_bytes(buffer)
    if message is None:
        return None
    n = len(message)
    pos = 4 + 2 + 32  # handshake header, legacy_version, random
    if pos >= n:
        raise ClientHelloError("truncated ClientHello")
    pos += 1 + message[pos]  # legacy_session_id
    if pos + 2 > n:
        raise ClientHelloError("truncated ClientHello")
    suites = (message[pos] << 8) | message[pos + 1]
    if suites == 0 or suites & 1:
        raise ClientHelloError("bad cipher suite list")
    pos += 2 + suites
    if pos >= n:
        raise ClientHelloError("truncated ClientHello")
    pos += 1 + message[pos]  # legacy_compression_methods
    if pos > n:
        raise ClientHelloError("truncated ClientHello")
    raw_name: bytes | None = None
    alpn: list[bytes] = []
    tls13 = False
    if pos < n:
        if pos + 2 > n:
            raise ClientHelloError("truncated ClientHello")
        ext_end = pos + 2 + ((message[pos] << 8) | message[pos + 1])
        pos += 2
        if ext_end > n:
            raise ClientHelloError("truncated ClientHello")
        seen: set[int] = set()
        while pos < ext_end:
            if pos + 4 > ext_end:
                raise ClientHelloError("truncated extension")
            ext_type, size = _EXTENSION_HEAD(message, pos)
            pos += 4
            end = pos + size
            if end > ext_end:
                raise ClientHelloError("truncated extension")
            if ext_type in seen:
                # RFC 8446 §4.2: duplicate extensions are illegal.
                raise ClientHelloError("duplicate extension %d" % (ext_type,))
            seen.add(ext_type)
            if ext_type == _EXT_SERVER_NAME and end > pos:
                raw_name = _first_host_name(message, pos, end)
            elif ext_type == _EXT_ALPN:
                _alpn_names(message, pos, end, alpn)
            elif ext_type == _EXT_SUPPORTED_VERSIONS:
                tls13 = _offers_tls13(message, pos, end)
            pos = end
    return raw_name, tuple(alpn), tls13


def _offers_tls13(message: bytes, pos: int, end: int) -> bool:
    """Whether a ``supported_versions`` body (a 1-byte length, then 2-byte versions) lists TLS 1.3."""
    if pos >= end:
        return False
    last = min(end, pos + 1 + message[pos])
    for at in range(pos + 1, last - 1, 2):
        if message[at] == 3 and message[at + 1] == 4:
            return True
    return False


def _unservable(raw: bytes) -> str | None:
    """Why OpenSSL would refuse this SNI host_name, or ``None``."""
    if len(raw) > MAX_SNI_BYTES:
        return "SNI longer than %d bytes" % (MAX_SNI_BYTES,)
    if b"\x00" in raw:
        return "SNI with a NUL byte"
    return None


def _first_host_name(message: bytes, pos: int, end: int) -> bytes | None:
    """The first host_name entry of a server_name extension (RFC 6066 §3)."""
    if pos + 2 > end or pos + 2 + ((message[pos] << 8) | message[pos + 1]) != end:
        raise ClientHelloError("bad server_name extension")
    pos += 2
    found = None
    while pos < end:
        if pos + 3 > end:
            raise ClientHelloError("bad server_name extension")
        name_type = message[pos]
        stop = pos + 3 + ((message[pos + 1] << 8) | message[pos + 2])
        if stop > end:
            raise ClientHelloError("bad server_name extension")
        if name_type == 0 and found is None:
            found = message[pos + 3 : stop]
        pos = stop
    return found


def _alpn_names(message: bytes, pos: int, end: int, into: list[bytes]) -> None:
    """The protocol names of an ALPN extension (RFC 7301 §3.1)."""
    if pos + 2 > end or pos + 2 + ((message[pos] << 8) | message[pos + 1]) != end:
        raise ClientHelloError("bad ALPN extension")
    pos += 2
    while pos < end:
        stop = pos + 1 + message[pos]
        if stop > end:
            raise ClientHelloError("bad ALPN extension")
        into.append(message[pos + 1 : stop])
        pos = stop


try:
    from kongacme.tls._clienthello import parse as _compiled_parse
except ImportError:  # not built here (an optional extension): the Python reader
    _compiled_parse = None

#: The reader :func:`parse_client_hello` uses (the compiled one where it is built).
_parse = _compiled_parse if _compiled_parse is not None else _parse_parts
