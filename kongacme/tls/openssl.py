"""
Contexts of kongacme's own OpenSSL binding (:mod:`kongacme.tls._openssl`,
compiled from ``_openssl.c``) for busy certificates: the third binding,
beside pyOpenSSL and the standard library's ``ssl``
(:mod:`kongacme.tls.session`).

Where it is built (``setup.py``, optional; the system's libssl), busy
certificates get its contexts instead of the standard library's
(:class:`~kongacme.tls.stdlib.StdContexts`), for two reasons measured in
bench/RESULTS.md (session 21):

- per kept-alive request, the compiled steady state
  (:mod:`kongacme.engine._steady`) calls OpenSSL directly through it (no
  Python frame, no bytes object, no GIL hand-off);
- its contexts have the pyOpenSSL contexts' whole profile, which the
  standard library cannot set: the TLS 1.3 suites and the key-exchange
  groups (X25519, P-256, P-384), and **no server session cache**, so TLS
  1.2 clients come here too (the standard library's contexts keep one, and
  take TLS 1.3 clients only).

Session tickets as ``session_tickets`` says: one per TLS 1.3 handshake, or
none at all; the keys are the context's own, rotated by rebuilding it.

Certificates that are not busy (yet) have their connections here too, from
their first on (:class:`~kongacme.tls.stdlib.StdContexts`): on a context
shared by the certificates with the same intermediates and route ALPN list
(:func:`shared_openssl_context`), each session bringing the leaf and key
(:func:`openssl_certificate`, parsed once per certificate), as the
pyOpenSSL shared contexts do. Per CPU-second, for such a certificate, the
pyOpenSSL path served 0.92× HAProxy's handshakes and 0.67× its kept-alive
requests, this one 0.96× and 1.05× (bench/RESULTS.md, session 22).
"""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING, Optional

from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import crypto

compiled: Optional[ModuleType]
try:
    from kongacme.tls import _openssl as compiled
except ImportError:  # not built here (no compiler or no libssl-dev): the standard library's ssl
    compiled = None

if TYPE_CHECKING:
    from kongacme.tls._openssl import Certificate, Context
    from kongacme.tls.context import Intermediates, ServedCertificate


def pem(served: "ServedCertificate") -> tuple[bytes, bytes]:
    """``(chain, key)`` as PEM: the leaf then its intermediates, and the key."""
    chain = [crypto.dump_certificate(crypto.FILETYPE_PEM, served.leaf)]
    chain.extend(certificate.public_bytes(Encoding.PEM) for certificate in served.chain.certificates)
    return b"".join(chain), crypto.dump_privatekey(crypto.FILETYPE_PEM, served.key)


def openssl_context(served: "ServedCertificate", alpn: tuple[bytes, ...], session_tickets: bool) -> "Context":
    """
    A context of the binding presenting ``served`` (its leaf, then its
    intermediates) and choosing among ``alpn`` (server's order, no ALPN on
    no overlap, as :func:`kongacme.tls.context._select_alpn`). The key goes
    to OpenSSL in memory only.

    :raises ssl.SSLError: if OpenSSL refuses the chain or key.
    :raises RuntimeError: if the binding is not built.
    """
    chain, key = pem(served)
    return pem_context(chain, key, alpn, session_tickets)


def pem_context(chain: bytes, key: bytes, alpn: tuple[bytes, ...], session_tickets: bool) -> "Context":
    """
    A ``Context`` with kongacme's TLS profile presenting ``chain`` (PEM,
    the leaf first) with ``key`` (PEM; empty: a shared context, each
    session bringing its leaf and key).

    :raises ssl.SSLError: if OpenSSL refuses the chain or key.
    :raises RuntimeError: if the binding is not built.
    """
    from kongacme.tls.context import INTERMEDIATE_CURVES, INTERMEDIATE_TLS12_CIPHERS, INTERMEDIATE_TLS13_CIPHERSUITES

    if compiled is None:
        raise RuntimeError("kongacme.tls._openssl is not built")
    return compiled.Context(
        chain, key, tuple(alpn), session_tickets,
        INTERMEDIATE_TLS12_CIPHERS, INTERMEDIATE_TLS13_CIPHERSUITES, INTERMEDIATE_CURVES,
    )


def shared_openssl_context(chain: "Intermediates", alpn: tuple[bytes, ...], session_tickets: bool) -> "Context":
    """
    A context of the binding without a leaf of its own, sending ``chain``'s
    intermediates after the leaf each session brings
    (``Session(context, certificate)``), otherwise as :func:`openssl_context`.

    :raises ssl.SSLError: if OpenSSL refuses an intermediate.
    :raises RuntimeError: if the binding is not built.
    """
    intermediates = b"".join(certificate.public_bytes(Encoding.PEM) for certificate in chain.certificates)
    return pem_context(intermediates, b"", alpn, session_tickets)


def openssl_certificate(served: "ServedCertificate") -> "Certificate":
    """
    ``served``'s leaf and key as the binding's objects (for sessions on a
    shared context), converted in memory, once per certificate: ~0.15 ms
    for a P-256 key (the leaf's decoding in OpenSSL 3.0 is most of it;
    bench/RESULTS.md, session 24).

    The key's DER comes from pyOpenSSL itself (its traditional form for an
    RSA or EC key), not through a ``cryptography`` key, whose loading
    checks an RSA key's primes: ~33 ms for a 2048-bit key.

    :raises ssl.SSLError: if OpenSSL refuses them.
    :raises RuntimeError: if the binding is not built.
    """
    if compiled is None:
        raise RuntimeError("kongacme.tls._openssl is not built")
    key = crypto.dump_privatekey(crypto.FILETYPE_ASN1, served.key)
    kind = {crypto.TYPE_EC: "EC", crypto.TYPE_RSA: "RSA"}.get(served.key.type(), "")
    return compiled.Certificate(crypto.dump_certificate(crypto.FILETYPE_ASN1, served.leaf), key, kind)
