"""
Real and crafted ClientHellos for the tests and benchmarks: what Python's
``ssl`` (OpenSSL) sends, and the same with a server_name no TLS library
would send (NUL bytes, 300 bytes).
"""

from __future__ import annotations

import ssl


def client_hello_bytes(server_name=None, alpn=None, max_version=None) -> bytes:
    """A real ClientHello produced by Python's ssl module (OpenSSL)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if alpn:
        context.set_alpn_protocols(alpn)
    if max_version:
        context.maximum_version = max_version
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = context.wrap_bio(incoming, outgoing, server_hostname=server_name)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def append_sni_extension(hello: bytes, raw: bytes) -> bytes:
    """``hello`` with one more server_name extension carrying ``raw``."""
    entry = b"\x00" + len(raw).to_bytes(2, "big") + raw
    return append_extension(hello, 0, len(entry).to_bytes(2, "big") + entry)


def append_extension(hello: bytes, ext_type: int, data: bytes) -> bytes:
    """``hello`` with one more extension, of type ``ext_type``, carrying ``data``."""
    ext = ext_type.to_bytes(2, "big") + len(data).to_bytes(2, "big") + data
    body = bytearray(hello[9:])
    # Walk to the extensions block: version+random, session id, suites, compression.
    pos = 34
    pos += 1 + body[pos]
    pos += 2 + int.from_bytes(body[pos : pos + 2], "big")
    pos += 1 + body[pos]
    ext_len = int.from_bytes(body[pos : pos + 2], "big")
    body[pos : pos + 2] = (ext_len + len(ext)).to_bytes(2, "big")
    body += ext
    handshake = b"\x01" + len(body).to_bytes(3, "big") + bytes(body)
    return b"\x16\x03\x01" + len(handshake).to_bytes(2, "big") + handshake


def with_raw_sni(raw: bytes) -> bytes:
    """A ClientHello whose only SNI extension carries ``raw`` verbatim."""
    return append_sni_extension(client_hello_bytes(), raw)
