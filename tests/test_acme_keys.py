"""
Tests for kongacme.acme.keys.
"""

from __future__ import annotations

import josepy as jose
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from kongacme.acme.keys import (
    account_key_from_pem,
    account_key_pem,
    generate_account_key,
    generate_private_key,
    generate_private_key_in_thread,
)


class KeysTests(SynchronousTestCase):
    """
    Tests for certificate and account keys.
    """

    def test_generate_private_key(self) -> None:
        """
        ecc is P-256; rsa has the asked size; anything else is a ValueError.
        """
        key = generate_private_key("ecc")
        self.assertIsInstance(key, ec.EllipticCurvePrivateKey)
        self.assertEqual(key.curve.name, "secp256r1")
        key = generate_private_key("rsa", 2048)
        self.assertIsInstance(key, rsa.RSAPrivateKey)
        self.assertEqual(key.key_size, 2048)
        self.assertRaises(ValueError, generate_private_key, "rsa", 1024)
        self.assertRaises(ValueError, generate_private_key, "dsa")

    def test_account_keys(self) -> None:
        """
        Account keys are EC P-256 by default or RSA 2048, and survive a
        round trip through PEM (how they are stored).
        """
        key = generate_account_key()
        self.assertIsInstance(key, jose.JWKEC)
        self.assertEqual(account_key_from_pem(account_key_pem(key)), key)
        rsa_key = generate_account_key("rsa")
        self.assertIsInstance(rsa_key, jose.JWKRSA)
        self.assertEqual(account_key_from_pem(account_key_pem(rsa_key).decode()), rsa_key)
        self.assertRaises(ValueError, generate_account_key, "dsa")

    def test_account_key_from_bad_pem(self) -> None:
        """
        Something that is not an unencrypted RSA or EC PEM key is a
        ValueError.
        """
        self.assertRaises(
            ValueError, account_key_from_pem, b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
        )
        pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        self.assertRaises(ValueError, account_key_from_pem, pem)


class ThreadedKeysTests(TestCase):
    """
    Tests for generate_private_key_in_thread.
    """

    async def test_rsa_in_thread(self) -> None:
        """
        An RSA key of the asked size comes from the reactor's thread pool.
        """
        key = await generate_private_key_in_thread(reactor, "rsa", 2048)
        self.assertIsInstance(key, rsa.RSAPrivateKey)
        self.assertEqual(key.key_size, 2048)

    async def test_ecc_and_errors(self) -> None:
        """
        ECDSA keys are made at once; invalid settings fail with ValueError.
        """
        d = generate_private_key_in_thread(reactor, "ecc")
        self.assertIsInstance(self.successResultOf(d), ec.EllipticCurvePrivateKey)
        self.failureResultOf(generate_private_key_in_thread(reactor, "rsa", 1024), ValueError)
        self.failureResultOf(generate_private_key_in_thread(reactor, "dsa"), ValueError)
