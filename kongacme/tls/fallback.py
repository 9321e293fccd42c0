"""
The fallback certificate: served when no other certificate matches, and to
clients without SNI. Generated on first start and kept in the state
directory, unless one is configured.
"""

from __future__ import annotations

import datetime
import os
from typing import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.logger import Logger

from kongacme.tls.certs import CertifiedKey, load_certified_key_files

log = Logger()

FALLBACK_NAME = "kongacme-fallback.invalid"


def generate_self_signed(
    name: str = FALLBACK_NAME,
    now: datetime.datetime | None = None,
    days: int = 3650,
    extra_names: Sequence[str] = (),
    extensions: Sequence[tuple[x509.ExtensionType, bool]] = (),
) -> CertifiedKey:
    """
    A self-signed ECDSA P-256 certificate for ``name`` (and ``extra_names``).

    :param extensions: more ``(extension, critical)`` to add (tls-alpn-01's
        id-pe-acmeIdentifier).
    """
    now = now or datetime.datetime.now(datetime.timezone.utc)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in (name, *extra_names)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    cert = builder.sign(key, hashes.SHA256())
    return CertifiedKey(chain=(cert,), key=key, source="generated fallback")


def _write_private(path: str, data: bytes, mode: int) -> None:
    """Write atomically with ``mode`` set before any byte lands."""
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def load_or_create_fallback(
    state_dir: str, cert_path: str | None = None, key_path: str | None = None
) -> CertifiedKey:
    """
    The configured fallback certificate, or the one kept in
    ``<state_dir>/fallback/``, generating it on first start.

    :raises kongacme.errors.CertificateError: if configured files are bad.
    """
    if cert_path and key_path:
        certified = load_certified_key_files(cert_path, key_path)
        certified.source = "fallback " + cert_path
        return certified
    directory = os.path.join(state_dir, "fallback")
    cert_file = os.path.join(directory, "cert.pem")
    key_file = os.path.join(directory, "key.pem")
    if os.path.exists(cert_file) and os.path.exists(key_file):
        certified = load_certified_key_files(cert_file, key_file)
        certified.source = "fallback " + cert_file
        return certified
    os.makedirs(directory, mode=0o700, exist_ok=True)
    certified = generate_self_signed()
    _write_private(key_file, certified.key_pem(), 0o600)
    _write_private(cert_file, certified.chain_pem(), 0o644)
    certified.source = "fallback " + cert_file
    log.info("generated fallback certificate {path}", path=cert_file)
    return certified
