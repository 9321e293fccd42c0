"""
Helpers for testing code that uses kongacme (like ``treq.testing``): a
throwaway certificate authority that issues proper leaf certificates.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from typing import Any, Sequence

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kongacme.tls.certs import CertifiedKey


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def make_key(key_type: str = "ecc", rsa_bits: int = 2048):
    """An ECDSA P-256 (``"ecc"``) or RSA (``"rsa"``) private key."""
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
    return ec.generate_private_key(ec.SECP256R1())


#: A CA certificate's key usage: it signs certificates and CRLs.
_CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=False,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)


@attrs.define
class TestCA:
    """
    A certificate authority for tests: a self-signed root that issues
    leaves with SAN, serverAuth and CA:FALSE (what strict clients and
    sslyze expect).
    """

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    name: str = "kongacme test CA"

    @classmethod
    def create(cls, name: str = "kongacme test CA") -> "TestCA":
        """A fresh CA valid for ten years."""
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(_CA_KEY_USAGE, critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(certificate=cert, key=key, name=name)

    def issue(
        self,
        names: Sequence[str],
        key_type: str = "ecc",
        rsa_bits: int = 2048,
        days: int = 90,
        not_before: datetime.datetime | None = None,
        ips: Sequence[str] = (),
        include_ca: bool = False,
        key: Any = None,
        lifetime: datetime.timedelta | None = None,
    ) -> CertifiedKey:
        """
        A leaf certificate for ``names`` (the first is also the CN).

        :param key: the leaf's private key (a renewal reusing its key);
            ``None`` makes a new one of ``key_type``.
        :param lifetime: overrides ``days`` (short-lived certificates).

        :param ips: IP addresses to add to the subjectAltName (a server
            reached by address, like a local Pebble at 127.0.0.1).
        :param include_ca: put this CA's certificate after the leaf.
        """
        if key is None:
            key = make_key(key_type, rsa_bits)
        start = not_before or (_now() - datetime.timedelta(minutes=5))
        span = lifetime if lifetime is not None else datetime.timedelta(days=days)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + span)
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName(n) for n in names] + [x509.IPAddress(ipaddress.ip_address(a)) for a in ips]
                ),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=not isinstance(key, ec.EllipticCurvePrivateKey),
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False
            )
        )
        cert = builder.sign(self.key, hashes.SHA256())
        chain = (cert, self.certificate) if include_ca else (cert,)
        return CertifiedKey(chain=chain, key=key, source="test CA")

    def intermediate(self, name: str = "kongacme test intermediate") -> "TestCA":
        """
        A CA whose certificate this one signs: its leaves issued with
        ``include_ca=True`` have the chain (leaf, intermediate), as an
        ACME CA's do, and verify against this root only.
        """
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_CA_KEY_USAGE, critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )
        return TestCA(certificate=cert, key=key, name=name)

    def ca_pem(self) -> bytes:
        """The root certificate as PEM (a trust anchor for clients)."""
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def write_ca(self, path: str) -> str:
        """Write :meth:`ca_pem` to ``path`` and return it."""
        with open(path, "wb") as f:
            f.write(self.ca_pem())
        return path


def write_certified_key(certified: CertifiedKey, directory: str, stem: str) -> tuple[str, str]:
    """
    Write ``certified`` as ``<stem>.crt`` (chain) and ``<stem>.key`` (mode
    0600) under ``directory``.

    :return: ``(cert_path, key_path)``.
    """
    cert_path = os.path.join(directory, stem + ".crt")
    key_path = os.path.join(directory, stem + ".key")
    with open(cert_path, "wb") as f:
        f.write(certified.chain_pem())
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(certified.key_pem())
    return cert_path, key_path


# Fakes users of the library want too (like treq.testing).
from kongacme.storage.memory import MemoryStorage  # noqa: E402
from kongacme.web.tokens import MemoryChallengeTokenStore  # noqa: E402

__all__ = ["TestCA", "make_key", "write_certified_key", "MemoryStorage", "MemoryChallengeTokenStore"]


from zope.interface import implementer as _implementer  # noqa: E402

from kongacme.interfaces import IIssuer  # noqa: E402


@_implementer(IIssuer)
class FakeIssuer:
    """
    An :class:`IIssuer` that issues from a :class:`TestCA`. Each call is
    recorded in ``requests``; set ``hold = True`` to get a Deferred the test
    fires with :meth:`release`, or ``fail_with`` to an exception to fail.
    """

    def __init__(self, ca: TestCA | None = None):
        self.ca = ca or TestCA.create()
        self.requests: list[str] = []
        #: ``(host, private_key, replaces)`` per call.
        self.calls: list[tuple[str, Any, Any]] = []
        #: When set (an ``IReactorTime``), certificates start at its "now"
        #: minus 5 minutes instead of the wall clock's.
        self.clock: Any = None
        #: The certificates' lifetime.
        self.lifetime = datetime.timedelta(days=90)
        self.hold = False
        self.fail_with: Exception | None = None
        self._held: list[tuple[str, "object"]] = []
        self._held_keys: dict[int, Any] = {}

    def issue(self, host, private_key=None, replaces=None):
        from twisted.internet.defer import Deferred, fail, succeed

        self.requests.append(host)
        self.calls.append((host, private_key, replaces))
        if self.fail_with is not None:
            return fail(self.fail_with)
        if self.hold:
            d = Deferred()
            self._held.append((host, d))
            self._held_keys[id(d)] = private_key
            return d
        return succeed(self._issue(host, private_key))

    def _issue(self, host: str, private_key: Any) -> CertifiedKey:
        start = None
        if self.clock is not None:
            start = datetime.datetime.fromtimestamp(self.clock.seconds() - 300, datetime.timezone.utc)
        return self.ca.issue([host], key=private_key, not_before=start, lifetime=self.lifetime)

    def release(self, host: str | None = None) -> None:
        """Fire the held requests (for ``host``, or all) with new certificates."""
        for held_host, d in list(self._held):
            if host is None or held_host == host:
                self._held.remove((held_host, d))
                if self.fail_with is not None:
                    d.errback(self.fail_with)
                else:
                    d.callback(self._issue(held_host, self._held_keys.pop(id(d), None)))


__all__.append("FakeIssuer")
