"""
Tests for kongacme.tls.certs and kongacme.tls.fallback.
"""

import os
import stat

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID
from twisted.trial.unittest import SynchronousTestCase

from kongacme.errors import CertificateError
from kongacme.testing import TestCA, make_key, write_certified_key
from kongacme.tls.certs import covers, load_certified_key, load_certified_key_files
from kongacme.tls.fallback import load_or_create_fallback


class LoadCertifiedKeyTests(SynchronousTestCase):
    """
    Tests for load_certified_key and load_certified_key_files.
    """

    def setUp(self):
        self.ca = TestCA.create()

    def test_round_trip_rsa_and_ecc(self):
        """RSA and ECDSA chains and keys load with their names and key type."""
        for key_type in ("rsa", "ecc"):
            original = self.ca.issue(["a.test", "B.test"], key_type=key_type)
            loaded = load_certified_key(original.chain_pem(), original.key_pem(), "x")
            self.assertEqual(loaded.names, ("a.test", "b.test"))
            self.assertEqual(loaded.key_type, key_type)
            self.assertEqual(loaded.fingerprint.count(":"), 19)

    def test_mismatched_key(self):
        """A key that does not belong to the certificate is refused, naming the source."""
        cert = self.ca.issue(["a.test"])
        other = self.ca.issue(["a.test"])
        e = self.assertRaises(CertificateError, load_certified_key, cert.chain_pem(), other.key_pem(), "my.pem")
        self.assertEqual(e.source, "my.pem")
        self.assertIn("does not match", e.reason)

    def test_garbage(self):
        """Truncated PEM or a missing key gives a CertificateError, not a crash."""
        cert = self.ca.issue(["a.test"])
        self.assertRaises(CertificateError, load_certified_key, cert.chain_pem()[:100], cert.key_pem())
        self.assertRaises(CertificateError, load_certified_key, b"", cert.key_pem())
        self.assertRaises(CertificateError, load_certified_key, cert.chain_pem(), b"nope")

    def test_missing_file(self):
        """A missing file is named in the error."""
        e = self.assertRaises(CertificateError, load_certified_key_files, "/nonexistent.crt", "/nonexistent.key")
        self.assertIn("/nonexistent.crt", str(e))

    def test_cn_only(self):
        """Without a SAN the subject CN is the name."""
        key = make_key()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Legacy.test")])
        import datetime

        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256())
        )
        from kongacme.tls.certs import certificate_names

        self.assertEqual(certificate_names(cert), ("legacy.test",))

    def test_covers(self):
        """covers() follows TLS: wildcard one label, exact otherwise."""
        self.assertTrue(covers("*.a.test", "x.a.test"))
        self.assertFalse(covers("*.a.test", "a.test"))
        self.assertFalse(covers("*.a.test", "y.x.a.test"))
        self.assertTrue(covers("a.test", "a.test"))


class FallbackTests(SynchronousTestCase):
    """
    Tests for load_or_create_fallback.
    """

    def test_generated_once_and_kept(self):
        """The fallback is generated on first start, private key mode 0600, and reused."""
        state = self.mktemp()
        first = load_or_create_fallback(state)
        key_file = os.path.join(state, "fallback", "key.pem")
        self.assertEqual(stat.S_IMODE(os.stat(key_file).st_mode), 0o600)
        second = load_or_create_fallback(state)
        self.assertEqual(first.fingerprint, second.fingerprint)

    def test_configured(self):
        """A configured fallback certificate is used instead."""
        directory = self.mktemp()
        os.makedirs(directory)
        ca = TestCA.create()
        cert_path, key_path = write_certified_key(ca.issue(["default.test"]), directory, "fb")
        loaded = load_or_create_fallback(directory, cert_path, key_path)
        self.assertEqual(loaded.names, ("default.test",))
        self.assertFalse(os.path.exists(os.path.join(directory, "fallback")))
