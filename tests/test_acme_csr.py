"""
Tests for kongacme.acme.csr.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.x509.oid import NameOID
from twisted.trial.unittest import SynchronousTestCase

from kongacme.acme.csr import check_host, make_csr, top_issuer_cn
from kongacme.acme.keys import generate_private_key
from kongacme.testing import TestCA


def cn(name: x509.Name) -> str:
    return str(name.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


class CSRTests(SynchronousTestCase):
    """
    Tests for check_host, make_csr and top_issuer_cn.
    """

    def test_check_host(self) -> None:
        """
        Names are lower-cased without a trailing dot; IP addresses (never a
        dns identifier), wildcards and non-names are refused.
        """
        self.assertEqual(check_host("Demo.Test."), "demo.test")
        self.assertEqual(check_host("xn--bcher-kva.example"), "xn--bcher-kva.example")
        for bad in (
            "127.0.0.1",
            "::1",
            "[::1]",
            "10.1.2.3",
            "*.example.com",
            "",
            "a..b",
            "ex ample.com",
            "bücher.example",
            "a" * 64 + ".com",
        ):
            self.assertRaises(ValueError, check_host, bad)
        self.assertRaises(TypeError, check_host, b"demo.test")

    def test_make_csr(self) -> None:
        """
        The CSR has CN and SAN = host; a name longer than a CN may be gets
        only the SAN.
        """
        key = generate_private_key("ecc")
        csr = make_csr("demo.test", key)
        self.assertEqual(cn(csr.subject), "demo.test")
        self.assertEqual(
            csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName),
            ["demo.test"],
        )
        long_name = ".".join(["a" * 30] * 3) + ".test"
        csr = make_csr(long_name, key)
        self.assertEqual(list(csr.subject), [])
        self.assertTrue(csr.is_signature_valid)

    def test_top_issuer_cn(self) -> None:
        """
        top_issuer_cn reads the last certificate's issuer CN; None for
        garbage.
        """
        ca = TestCA.create("Some Root")
        chain = ca.issue(["a.test"]).chain_pem() + ca.ca_pem()
        self.assertEqual(top_issuer_cn(chain), "Some Root")
        self.assertEqual(top_issuer_cn(ca.issue(["a.test"]).chain_pem()), "Some Root")
        self.assertIsNone(top_issuer_cn(b"garbage"))
