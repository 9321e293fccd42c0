"""
Names and certificate requests: the dns identifier we may order for a host,
the CSR we finalize with, and the issuer name ``preferred_chain`` is
matched against.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from kongacme.net import is_ip_literal
from kongacme.tls.certs import PrivateKey, issuer_cn


def check_host(host: str, wildcard: bool = False) -> str:
    """
    The dns identifier to order for ``host``: lower-cased, without a
    trailing dot.

    :param wildcard: a ``*.`` name is allowed (dns-01 is among the
        challenges answered: RFC 8555 §7.1.3 leaves only it for wildcards).
    :raises ValueError: for an IP address (never sent as a dns identifier,
        unlike Kong), a wildcard unless ``wildcard`` (http-01 cannot
        validate one, §8.3) or something that is not a host name.
    """
    if not isinstance(host, str):
        raise TypeError("host must be str, not %s" % (type(host).__name__,))
    name = host.strip().lower().rstrip(".")
    if is_ip_literal(name):
        raise ValueError("%r is an IP address, not a DNS name" % (host,))
    if name.startswith("*."):
        if not wildcard:
            raise ValueError("%r: wildcard names need dns-01 (issuance.challenge_types)" % (host,))
        return "*." + check_host(name[2:])
    labels = name.split(".")
    if not name or len(name) > 253 or any(not label or len(label) > 63 for label in labels):
        raise ValueError("%r is not a valid DNS name" % (host,))
    if any(not (c.isascii() and (c.isalnum() or c in "-_")) for label in labels for c in label):
        raise ValueError("%r is not a valid DNS name (use the A-label form of IDNs)" % (host,))
    return name


def make_csr(names: Union[str, Sequence[str]], private_key: PrivateKey) -> x509.CertificateSigningRequest:
    """
    A CSR for ``names`` (one host name, or several): a subjectAltName per
    name and, as Kong sends, CN the first name (left out above 64
    characters, the CN's limit).
    """
    names = [names] if isinstance(names, str) else list(names)
    host = names[0]
    subject = []
    if len(host) <= 64:
        subject.append(x509.NameAttribute(NameOID.COMMON_NAME, host))
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name(subject))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
        .sign(private_key, hashes.SHA256())
    )


def top_issuer_cn(chain_pem: bytes) -> Optional[str]:
    """
    The issuer CN of the last certificate in a PEM chain (the name
    ``preferred_chain`` is matched against), or ``None``.
    """
    try:
        certificates = x509.load_pem_x509_certificates(chain_pem)
    except ValueError:
        return None
    if not certificates:
        return None
    return issuer_cn(certificates[-1])
