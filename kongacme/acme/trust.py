"""
The HTTP client that talks to the CA, with a configurable trust store.

Public CAs are trusted through the system's store; a private CA (or Pebble
in tests) needs its root given as a PEM bundle — the "self signed
certificate" errors Kong users ran into when there was no way to say so.
"""

from __future__ import annotations

from typing import Any, Optional

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from treq.client import HTTPClient
from twisted.internet import ssl
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool

from kongacme.errors import CertificateError

#: Seconds to establish a TCP connection to the CA.
DEFAULT_CONNECT_TIMEOUT = 30.0


def load_trust_root(ca_bundle: str) -> Any:
    """
    A trust root (an ``IOpenSSLTrustRoot``) made of every certificate in a
    PEM file.

    :param ca_bundle: path of a PEM file with one or more CA certificates.
    :raises CertificateError: when the file cannot be read or holds no
        certificate.
    """
    try:
        with open(ca_bundle, "rb") as f:
            data = f.read()
    except OSError as e:
        raise CertificateError(ca_bundle, e.strerror or str(e)) from None
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise CertificateError(ca_bundle, "no valid PEM certificate (%s)" % (e,)) from None
    if not certificates:
        raise CertificateError(ca_bundle, "no certificate found")
    return ssl.trustRootFromCertificates(
        [ssl.Certificate.loadPEM(c.public_bytes(serialization.Encoding.PEM)) for c in certificates]
    )


def make_http_client(
    reactor: Any,
    ca_bundle: Optional[str] = None,
    *,
    pool: Optional[HTTPConnectionPool] = None,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
) -> HTTPClient:
    """
    A treq ``HTTPClient`` whose HTTPS connections verify the server's name
    and chain against ``ca_bundle``, or against the system's trust store.

    :param reactor: provides ``IReactorTCP``, ``IReactorTime`` and
        ``IReactorPluggableNameResolver``.
    :param ca_bundle: path of a PEM file with the CA certificate(s) to trust
        (replacing, not adding to, the system store), or ``None``.
    :param pool: an :class:`~twisted.web.client.HTTPConnectionPool`; pass a
        persistent one to reuse connections across requests (the owner then
        calls ``pool.closeCachedConnections()`` on shutdown). ``None``: one
        connection per request.
    :param connect_timeout: seconds to establish a connection.
    :raises CertificateError: when ``ca_bundle`` is unusable.
    """
    trust_root = load_trust_root(ca_bundle) if ca_bundle is not None else None
    agent = Agent(
        reactor,
        contextFactory=BrowserLikePolicyForHTTPS(trustRoot=trust_root),
        connectTimeout=connect_timeout,
        pool=pool,
    )
    return HTTPClient(agent)
