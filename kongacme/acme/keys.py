"""
Keys: certificate keys per ``cert_type`` / ``rsa_key_size``, and the ACME
account key as a ``josepy`` JWK (to sign with) and as PEM (to store).
"""

from __future__ import annotations

from typing import Any

import josepy as jose
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.threads import deferToThreadPool

from kongacme.tls.certs import PrivateKey

CERT_TYPES = ("rsa", "ecc")
RSA_KEY_SIZES = (2048, 3072, 4096)


def generate_private_key(cert_type: str = "rsa", rsa_key_size: int = 4096) -> PrivateKey:
    """
    A new certificate key, as Kong's ``cert_type`` and ``rsa_key_size`` say.

    :param cert_type: ``"rsa"`` or ``"ecc"`` (ECDSA P-256).
    :param rsa_key_size: 2048, 3072 or 4096; ignored for ``"ecc"``.
    :raises ValueError: for another type or size.
    """
    if cert_type == "ecc":
        return ec.generate_private_key(ec.SECP256R1())
    if cert_type == "rsa":
        if rsa_key_size not in RSA_KEY_SIZES:
            raise ValueError("rsa_key_size must be one of 2048, 3072, 4096, not %r" % (rsa_key_size,))
        return rsa.generate_private_key(public_exponent=65537, key_size=rsa_key_size)
    raise ValueError("cert_type must be 'rsa' or 'ecc', not %r" % (cert_type,))


def generate_private_key_in_thread(
    reactor: Any, cert_type: str = "rsa", rsa_key_size: int = 4096
) -> Deferred[PrivateKey]:
    """
    :func:`generate_private_key` off the reactor thread when it is slow: an
    RSA 4096 key takes a second or two, during which a reactor would serve
    nobody (OpenSSL releases the GIL meanwhile). ECDSA keys take
    microseconds and are made at once.

    :param reactor: provides ``IReactorThreads``.
    :return: ``Deferred`` firing with the key, or failing with
        ``ValueError`` for an invalid type or size.
    """
    if cert_type == "rsa" and rsa_key_size in RSA_KEY_SIZES:
        return deferToThreadPool(reactor, reactor.getThreadPool(), generate_private_key, cert_type, rsa_key_size)
    return maybeDeferred(generate_private_key, cert_type, rsa_key_size)


def private_key_pem(key: PrivateKey) -> bytes:
    """``key`` as unencrypted PKCS#8 PEM."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def generate_account_key(key_type: str = "ecc") -> jose.JWK:
    """
    A new ACME account key: EC P-256 (ES256, the default: small and fast to
    sign with) or RSA 2048 (RS256).
    """
    if key_type == "ecc":
        return jose.JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
    if key_type == "rsa":
        return jose.JWKRSA(key=rsa.generate_private_key(public_exponent=65537, key_size=2048))
    raise ValueError("account key type must be 'rsa' or 'ecc', not %r" % (key_type,))


def account_key_from_pem(pem: bytes | str) -> jose.JWK:
    """
    An account key from an unencrypted PEM private key (RSA or EC), e.g.
    Kong's stored ``{"key": PEM}`` or the ``account_key`` setting.

    :raises ValueError: when it is not such a key.
    """
    if isinstance(pem, str):
        pem = pem.encode("ascii")
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as e:
        raise ValueError("not an unencrypted PEM private key (%s)" % (e,)) from None
    if isinstance(key, rsa.RSAPrivateKey):
        return jose.JWKRSA(key=key)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return jose.JWKEC(key=key)
    raise ValueError("account keys must be RSA or EC")


def account_key_pem(key: jose.JWK) -> bytes:
    """The account key as unencrypted PKCS#8 PEM (for storage)."""
    return private_key_pem(key.key)
