"""
Tests for kongacme.acme.trust, against a real HTTPS server on 127.0.0.1.
"""

from __future__ import annotations

import os

from OpenSSL import crypto
from twisted.internet import reactor, ssl
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data

from kongacme.acme.keys import generate_account_key
from kongacme.acme.transport import AcmeTransport
from kongacme.acme.trust import load_trust_root, make_http_client
from kongacme.errors import AcmeTransportError, CertificateError
from kongacme.testing import TestCA
from tests.pebble import listener_certificate, settle


class LoadTrustRootTests(TestCase):
    """
    Tests for load_trust_root.
    """

    def write(self, data: bytes) -> str:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(data)
        return path

    def test_missing(self) -> None:
        """
        A missing file is a CertificateError naming it.
        """
        path = os.path.join(self.mktemp(), "nope.pem")
        error = self.assertRaises(CertificateError, load_trust_root, path)
        self.assertEqual(error.source, path)

    def test_no_certificate(self) -> None:
        """
        A file without a PEM certificate is a CertificateError.
        """
        for data in (b"", b"hello\n", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"):
            self.assertRaises(CertificateError, load_trust_root, self.write(data))


class MakeHTTPClientTests(TestCase):
    """
    Tests for make_http_client: HTTPS to a server whose certificate comes
    from a private CA.
    """

    def setUp(self) -> None:
        self.ca = TestCA.create("trust test CA")
        served = listener_certificate(self.ca)
        options = ssl.CertificateOptions(
            privateKey=crypto.PKey.from_cryptography_key(served.key),
            certificate=crypto.X509.from_cryptography(served.leaf),
        )
        root = Resource()
        root.putChild(b"dir", Data(b'{"ok": true}', "application/json"))
        port = reactor.listenSSL(0, Site(root), options, interface="127.0.0.1")
        self.addCleanup(lambda: port.stopListening().addCallback(lambda _: settle()))
        self.url = "https://127.0.0.1:%d/dir" % (port.getHost().port,)

    def bundle(self, *cas: TestCA) -> str:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"".join(ca.ca_pem() for ca in cas))
        return path

    async def fetch(self, ca_bundle: str | None) -> bytes:
        transport = AcmeTransport(make_http_client(reactor, ca_bundle), reactor, generate_account_key(), timeout=5)
        return (await transport.get(self.url)).body

    async def test_bundle_trusted(self) -> None:
        """
        With the private CA in the bundle the server is trusted.
        """
        self.assertEqual(await self.fetch(self.bundle(self.ca)), b'{"ok": true}')

    async def test_bundle_of_several(self) -> None:
        """
        Every CA in a multi-certificate bundle is trusted.
        """
        self.assertEqual(await self.fetch(self.bundle(TestCA.create("other"), self.ca)), b'{"ok": true}')

    async def test_other_ca(self) -> None:
        """
        A bundle without the server's CA makes the connection fail with a
        transport error saying why.
        """
        with self.assertRaises(AcmeTransportError) as caught:
            await self.fetch(self.bundle(TestCA.create("other")))
        self.assertIn("certificate verify failed", caught.exception.reason)

    async def test_system_trust(self) -> None:
        """
        Without a bundle the system's store is used, which does not know a
        private CA.
        """
        with self.assertRaises(AcmeTransportError) as caught:
            await self.fetch(None)
        self.assertIn("certificate verify failed", caught.exception.reason)
