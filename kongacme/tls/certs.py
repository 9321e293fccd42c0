"""
A certificate chain with its private key, parsed once and shared by the
cache, the TLS contexts and (later) the Admin API.
"""

from __future__ import annotations

import datetime
from typing import Sequence

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtensionOID, NameOID

from kongacme.errors import CertificateError
from kongacme.net import is_ip_literal

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@attrs.define(eq=False, repr=False)
class CertifiedKey:
    """
    A leaf certificate, its intermediates and its private key.

    Compared by identity: the TLS context builder memoises on the object.

    :ivar chain: leaf first, then intermediates.
    :ivar key: the leaf's private key.
    :ivar source: where it came from, for logs (a path, "fallback", a
        storage key).
    """

    chain: tuple[x509.Certificate, ...]
    key: PrivateKey
    source: str = ""

    @property
    def leaf(self) -> x509.Certificate:
        """The end-entity certificate."""
        return self.chain[0]

    @property
    def names(self) -> tuple[str, ...]:
        """
        The DNS names the certificate is valid for: its subjectAltName DNS
        entries, or its CN when it has no SAN; lower-cased.
        """
        return certificate_names(self.leaf)

    @property
    def not_before(self) -> datetime.datetime:
        return self.leaf.not_valid_before_utc

    @property
    def not_after(self) -> datetime.datetime:
        return self.leaf.not_valid_after_utc

    @property
    def fingerprint(self) -> str:
        """SHA-1 fingerprint in Kong's format: upper-case colon hex."""
        return ":".join("%02X" % b for b in self.leaf.fingerprint(hashes.SHA1()))

    @property
    def key_type(self) -> str:
        """``"rsa"`` or ``"ecc"``."""
        return "rsa" if isinstance(self.key, rsa.RSAPrivateKey) else "ecc"

    def __repr__(self) -> str:
        return "<CertifiedKey %s %s until %s>" % (
            ",".join(self.names) or "?",
            self.key_type,
            self.not_after.isoformat(),
        )

    def chain_pem(self) -> bytes:
        """The chain as concatenated PEM."""
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.chain)

    def key_pem(self) -> bytes:
        """The private key as unencrypted PKCS#8 PEM."""
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def issuer_cn(cert: x509.Certificate) -> str | None:
    """The issuer's common name, or ``None`` when it has none."""
    names = cert.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names:
        return None
    value = names[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def issuer_label(cert: x509.Certificate) -> str:
    """The issuer's common name, or its whole DN when it has none (for display)."""
    return issuer_cn(cert) or cert.issuer.rfc4514_string()


def certificate_names(cert: x509.Certificate) -> tuple[str, ...]:
    """
    DNS names of ``cert``: SAN dNSName entries, else the subject CN.
    IP addresses are never returned (SNI cannot carry them).
    """
    try:
        san = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
    except x509.ExtensionNotFound:
        san = None
    names: list[str] = []
    if san is not None:
        names = [n.lower().rstrip(".") for n in san.get_values_for_type(x509.DNSName)]
    else:
        for attribute in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME):
            value = str(attribute.value).lower()
            if not is_ip_literal(value):
                names.append(value)
    return tuple(dict.fromkeys(names))


def load_certified_key(chain_pem: bytes, key_pem: bytes, source: str = "") -> CertifiedKey:
    """
    Parse a PEM chain (leaf first) and a PEM private key, checking that they
    belong together.

    :param source: where the bytes came from, used in error messages.
    :raises CertificateError: naming ``source`` and what is wrong.
    """
    try:
        chain = tuple(x509.load_pem_x509_certificates(chain_pem))
    except ValueError as e:
        raise CertificateError(source, "no valid PEM certificate (%s)" % (e,)) from None
    if not chain:
        raise CertificateError(source, "no certificate found")
    try:
        # cryptography's RSA consistency check costs 57 ms (2048) to 386 ms
        # (4096) per key, minutes for 10,000 static certificates at start.
        # What matters here, that the key belongs to the certificate, is
        # checked below (and by OpenSSL's check_privatekey per context).
        key = serialization.load_pem_private_key(key_pem, password=None, unsafe_skip_rsa_key_validation=True)
    except (ValueError, TypeError) as e:
        raise CertificateError(source, "no valid unencrypted PEM private key (%s)" % (e,)) from None
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        raise CertificateError(source, "only RSA and ECDSA keys are supported")
    if key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != chain[0].public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ):
        raise CertificateError(source, "private key does not match the certificate")
    return CertifiedKey(chain=chain, key=key, source=source)


def load_certified_key_files(cert_path: str, key_path: str) -> CertifiedKey:
    """
    Read :func:`load_certified_key`'s inputs from files.

    :raises CertificateError: if a file cannot be read or parsed.
    """
    try:
        with open(cert_path, "rb") as f:
            chain_pem = f.read()
        with open(key_path, "rb") as f:
            key_pem = f.read()
    except OSError as e:
        raise CertificateError(e.filename or cert_path, e.strerror or str(e)) from None
    return load_certified_key(chain_pem, key_pem, source=cert_path)


def covers(pattern: str, name: str) -> bool:
    """
    Whether a certificate name ``pattern`` (possibly ``*.example.com``)
    covers host ``name`` the way TLS clients check it: a wildcard matches
    exactly one left-most label.
    """
    if pattern == name:
        return True
    if pattern.startswith("*."):
        head, _, rest = name.partition(".")
        return bool(head) and rest == pattern[2:]
    return False


def names_from(patterns: Sequence[str] | None, certified: CertifiedKey) -> tuple[str, ...]:
    """The names to file ``certified`` under: ``patterns`` or its own names."""
    if patterns:
        return tuple(p.lower() for p in patterns)
    return certified.names
