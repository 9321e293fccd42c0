"""
Tests for kongacme.storage.encryption: private keys encrypted at rest, over
memory storage (the conformance suites) and a real ``redis-server``.
"""

from __future__ import annotations

import base64
import os
from typing import Any

from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from kongacme.config.acme import AcmeConfig
from kongacme.config.daemon import StorageEncryptionConfig
from kongacme.config.load import parse_config
from kongacme.errors import ConfigError
from kongacme.fleet.propagation import Propagator
from kongacme.interfaces import IAtomicStorage, IStorage
from kongacme.storage import keys, storage_from_config
from kongacme.storage.encryption import (
    PREFIX,
    EncryptedAtomicStorage,
    EncryptedStorage,
    EncryptionKeyError,
    decode_key,
    encrypted,
    load_key,
)
from kongacme.storage.errors import StorageValueError, StoredCertificateError
from kongacme.storage.memory import MemoryStorage
from kongacme.testing import TestCA
from kongacme.tls.cache import CertificateCache
from kongacme.tls.fallback import generate_self_signed
from tests.lock_conformance import LockConformanceMixin
from tests.redisfixture import RedisServer
from tests.storage_conformance import StorageConformanceMixin

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
ACCOUNT = keys.account_key("https://ca.example/directory", "ops@example.com")
_CA = None


def ca() -> TestCA:
    global _CA
    if _CA is None:
        _CA = TestCA.create("encryption tests")
    return _CA


def cert_value(host: str) -> bytes:
    return keys.encode_cert_key(ca().issue([host]))


class EncryptedMemoryConformanceTests(StorageConformanceMixin, LockConformanceMixin, TestCase):
    """
    Tests for EncryptedAtomicStorage over MemoryStorage: the IStorage and
    IAtomicStorage conformance suites pass through the wrapper.
    """

    def make_storage(self) -> tuple[EncryptedStorage, Clock]:
        clock = Clock()
        return encrypted(MemoryStorage(clock), KEY), clock


@implementer(IStorage)
class PlainOnlyStorage:
    """An IStorage without compare-and-swap (delegates to memory)."""

    def __init__(self, clock: Clock):
        self._inner = MemoryStorage(clock)

    def get(self, key):
        return self._inner.get(key)

    def set(self, key, value, ttl=None):
        return self._inner.set(key, value, ttl)

    def add(self, key, value, ttl=None):
        return self._inner.add(key, value, ttl)

    def delete(self, key):
        return self._inner.delete(key)

    def list(self, prefix):
        return self._inner.list(prefix)


class LogCapture:
    def __init__(self, test: Any):
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        test.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def warnings(self, text: str) -> list[dict]:
        from twisted.logger import formatEvent

        return [e for e in self.events if e["log_level"].name == "warn" and text in formatEvent(e)]


class EncryptedStorageTests(SynchronousTestCase):
    """
    Tests for EncryptedStorage: what is stored, what is read back.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.inner = MemoryStorage(self.clock)
        self.storage = encrypted(self.inner, KEY)

    def stored(self, key: str) -> bytes:
        return self.successResultOf(self.inner.get(key))

    def test_interfaces(self) -> None:
        """
        The wrapper provides IAtomicStorage when the wrapped store does,
        only IStorage otherwise, and says what it wraps.
        """
        self.assertIsInstance(self.storage, EncryptedAtomicStorage)
        self.assertTrue(verifyObject(IAtomicStorage, self.storage))
        self.assertIs(self.storage.wrapped, self.inner)
        plain = encrypted(PlainOnlyStorage(self.clock), KEY)
        self.assertTrue(verifyObject(IStorage, plain))
        self.assertFalse(IAtomicStorage.providedBy(plain))
        self.assertRaises(TypeError, EncryptedStorage, object(), KEY)
        self.assertRaises(ValueError, EncryptedStorage, self.inner, b"short")
        self.assertNotIn(repr(KEY), repr(self.storage))

    def test_round_trip(self) -> None:
        """Certificate and account values read back byte for byte."""
        value = cert_value("rt.example")
        account = keys.encode_account(ca().issue(["acct.example"]).key_pem())
        self.successResultOf(self.storage.set(keys.cert_key("rt.example"), value))
        self.assertTrue(self.successResultOf(self.storage.add(ACCOUNT, account)))
        self.assertEqual(self.successResultOf(self.storage.get(keys.cert_key("rt.example"))), value)
        self.assertEqual(self.successResultOf(self.storage.get(ACCOUNT)), account)
        keys.decode_cert_key(self.successResultOf(self.storage.get(keys.cert_key("rt.example"))), "x")

    def test_only_the_private_key_is_encrypted(self) -> None:
        """
        The stored "key" field is an encrypted blob with no PEM in it; the
        certificate chain stays readable; other keys are untouched.
        """
        value = cert_value("enc.example")
        self.successResultOf(self.storage.set(keys.cert_key("enc.example"), value))
        self.successResultOf(self.storage.set(keys.renew_config("enc.example"), b'{"host":"enc.example"}'))
        raw = self.stored(keys.cert_key("enc.example"))
        self.assertNotIn(b"PRIVATE KEY", raw)
        self.assertIn(b'"key":"' + PREFIX.encode(), raw)
        self.assertIn(b"BEGIN CERTIFICATE", raw)
        self.assertEqual(self.stored(keys.renew_config("enc.example")), b'{"host":"enc.example"}')
        # A new nonce on every write.
        self.successResultOf(self.storage.set(keys.cert_key("enc.example"), value))
        self.assertNotEqual(self.stored(keys.cert_key("enc.example")), raw)

    def test_wrong_key(self) -> None:
        """
        A value encrypted with another key fails get with
        StoredCertificateError (a StorageValueError), which callers report
        and skip.
        """
        self.successResultOf(self.storage.set(keys.cert_key("wk.example"), cert_value("wk.example")))
        other = encrypted(self.inner, OTHER_KEY)
        failure = self.failureResultOf(other.get(keys.cert_key("wk.example")), StoredCertificateError)
        self.assertIsInstance(failure.value, StorageValueError)
        self.assertEqual(failure.value.key, keys.cert_key("wk.example"))
        self.assertIn("does not decrypt", str(failure.value))

    def test_moved_value(self) -> None:
        """A value copied to another storage key does not decrypt there."""
        self.successResultOf(self.storage.set(keys.cert_key("a.example"), cert_value("a.example")))
        self.successResultOf(self.inner.set(keys.cert_key("b.example"), self.stored(keys.cert_key("a.example"))))
        self.failureResultOf(self.storage.get(keys.cert_key("b.example")), StoredCertificateError)

    def test_tampered_value(self) -> None:
        """A changed or truncated blob is a StoredCertificateError, not a crash."""
        self.successResultOf(self.storage.set(ACCOUNT, keys.encode_account(ca().issue(["t.example"]).key_pem())))
        raw = self.stored(ACCOUNT)
        for bad in (raw.replace(PREFIX.encode(), PREFIX.encode() + b"AAAA"), b'{"key":"' + PREFIX.encode() + b'!!"}',
                    b'{"key":"' + PREFIX.encode() + b'"}'):
            self.successResultOf(self.inner.set(ACCOUNT, bad))
            self.failureResultOf(self.storage.get(ACCOUNT), StoredCertificateError)

    def test_plaintext_legacy_value(self) -> None:
        """
        A plaintext value (Kong's, or from before encryption was on) reads
        as it is, logged once per key; the next write encrypts it.
        """
        logs = LogCapture(self)
        value = cert_value("legacy.example")
        key = keys.cert_key("legacy.example")
        self.successResultOf(self.inner.set(key, value))
        self.assertEqual(self.successResultOf(self.storage.get(key)), value)
        self.assertEqual(self.successResultOf(self.storage.get(key)), value)
        self.assertEqual(len(logs.warnings("unencrypted")), 1)
        self.successResultOf(self.storage.set(key, value))
        self.assertNotIn(b"PRIVATE KEY", self.stored(key))
        self.assertEqual(self.successResultOf(self.storage.get(key)), value)

    def test_unrecognised_values_pass_through(self) -> None:
        """Values under key names that are not JSON with a "key" string are stored as given."""
        key = keys.cert_key("odd.example")
        for value in (b"", b"\xff\x00", b"[]", b'{"key":1}', b'{"cert":"x"}'):
            self.successResultOf(self.storage.set(key, value))
            self.assertEqual(self.stored(key), value)
            self.assertEqual(self.successResultOf(self.storage.get(key)), value)

    def test_compare_and_swap_on_encrypted_values(self) -> None:
        """compare_and_set/compare_and_delete compare the decrypted values."""
        key = keys.cert_key("cas.example")
        old, new = cert_value("cas.example"), cert_value("cas.example")
        self.successResultOf(self.storage.set(key, old))
        self.assertFalse(self.successResultOf(self.storage.compare_and_set(key, new, new)))
        self.assertTrue(self.successResultOf(self.storage.compare_and_set(key, old, new)))
        self.assertNotIn(b"PRIVATE KEY", self.stored(key))
        self.assertEqual(self.successResultOf(self.storage.get(key)), new)
        self.assertFalse(self.successResultOf(self.storage.compare_and_delete(key, old)))
        self.assertTrue(self.successResultOf(self.storage.compare_and_delete(key, new)))
        self.assertIsNone(self.stored(key))
        self.assertFalse(self.successResultOf(self.storage.compare_and_set(key, old, new)))

    def test_propagation_skips_undecryptable(self) -> None:
        """
        A certificate that does not decrypt is reported and skipped by the
        fleet's full sync; the others load.
        """
        logs = LogCapture(self)
        other = encrypted(self.inner, OTHER_KEY)
        self.successResultOf(other.set(keys.cert_key("bad.example"), cert_value("bad.example")))
        self.successResultOf(self.storage.set(keys.cert_key("good.example"), cert_value("good.example")))
        cache = CertificateCache(generate_self_signed())
        propagator = Propagator(self.storage, cache, self.clock)
        self.successResultOf(propagator.full_sync())
        self.assertIsNotNone(cache.get("good.example"))
        self.assertIsNone(cache.get("bad.example"))
        self.assertEqual(len(logs.warnings("does not decrypt")), 1)


class EncryptedRedisTests(TestCase):
    """
    Tests for EncryptedAtomicStorage over a real Redis: what Redis holds.
    """

    async def test_no_private_key_in_redis(self) -> None:
        """
        Redis holds no PEM private key for certificates or the account;
        reading through the wrapper gives the original values.
        """
        server = await RedisServer.start(self)
        storage = encrypted(server.storage(namespace="ns:"), KEY)
        value = cert_value("redis.example")
        account = keys.encode_account(ca().issue(["acct.example"]).key_pem())
        await storage.set(keys.cert_key("redis.example"), value)
        await storage.set(ACCOUNT, account)
        for name in (keys.cert_key("redis.example"), ACCOUNT):
            raw = server.command("GET", b"ns:" + name.encode())
            self.assertNotIn(b"PRIVATE KEY", raw)
            self.assertIn(PREFIX.encode(), raw)
        self.assertIn(b"BEGIN CERTIFICATE", server.command("GET", b"ns:" + keys.cert_key("redis.example").encode()))
        self.assertEqual(await storage.get(keys.cert_key("redis.example")), value)
        self.assertEqual(await storage.get(ACCOUNT), account)
        self.assertEqual(await storage.list(keys.CERT_KEY_PREFIX), [keys.cert_key("redis.example")])


class KeyMaterialTests(SynchronousTestCase):
    """
    Tests for decode_key and load_key.
    """

    def test_decode_forms(self) -> None:
        """Standard and URL-safe base64, with or without padding and whitespace."""
        key = bytes([0xFB, 0xFF] * 16)
        for text in (base64.b64encode(key), base64.urlsafe_b64encode(key), base64.urlsafe_b64encode(key).rstrip(b"="),
                     b"  " + base64.b64encode(key) + b"\n"):
            self.assertEqual(decode_key(text, "f"), key)

    def test_decode_errors(self) -> None:
        """Wrong lengths and non-base64 are errors naming the field."""
        for text in ("", base64.b64encode(b"x" * 16).decode(), base64.b64encode(b"x" * 48).decode(), "not base64!",
                     b"\xff\xfe"):
            error = self.assertRaises(EncryptionKeyError, decode_key, text, "storage_encryption.key_env")
            self.assertTrue(str(error).startswith("storage_encryption.key_env: "))

    def test_load_from_file_and_env(self) -> None:
        """The key comes from key_file or from the variable key_env names."""
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(base64.b64encode(KEY) + b"\n")
        self.assertEqual(load_key(StorageEncryptionConfig(key_file=path)), KEY)
        env = {"KONGACME_TEST_KEY": base64.urlsafe_b64encode(KEY).decode()}
        self.assertEqual(load_key(StorageEncryptionConfig(key_env="KONGACME_TEST_KEY"), env), KEY)

    def test_load_errors(self) -> None:
        """Missing file, unset variable, both given: errors naming the field."""
        cases = [
            (StorageEncryptionConfig(key_file="/nonexistent/key"), "storage_encryption.key_file"),
            (StorageEncryptionConfig(key_env="KONGACME_UNSET"), "storage_encryption.key_env"),
            (StorageEncryptionConfig(key_file="/x", key_env="Y"), "storage_encryption"),
            (StorageEncryptionConfig(), "storage_encryption"),
        ]
        for config, field in cases:
            error = self.assertRaises(EncryptionKeyError, load_key, config, {})
            self.assertEqual(error.field, field)


class ConfigTests(SynchronousTestCase):
    """
    Tests for the storage_encryption section's validation and
    storage_from_config's wrapping.
    """

    def key_file(self, content: bytes) -> str:
        path = os.path.abspath(self.mktemp())
        with open(path, "wb") as f:
            f.write(content)
        return path

    def problems(self, section: dict) -> list[tuple[str, str]]:
        return self.assertRaises(ConfigError, parse_config, {"storage_encryption": section}, "/srv").problems

    def test_valid(self) -> None:
        """A good key file gives an enabled section; the default is off."""
        path = self.key_file(base64.b64encode(KEY))
        self.assertTrue(parse_config({"storage_encryption": {"key_file": path}}, "/srv").storage_encryption.enabled)
        self.assertFalse(parse_config({}, "/srv").storage_encryption.enabled)

    def test_problems(self) -> None:
        """Each problem names its field path."""
        short = self.key_file(base64.b64encode(b"x" * 16))
        good = self.key_file(base64.b64encode(KEY))
        [(path, message)] = self.problems({"key_file": short})
        self.assertEqual(path, "storage_encryption.key_file")
        self.assertIn("not 32", message)
        [(path, message)] = self.problems({"key_file": "/nonexistent/key"})
        self.assertEqual(path, "storage_encryption.key_file")
        [(path, message)] = self.problems({"key_file": good, "key_env": "X"})
        self.assertEqual((path, message), ("storage_encryption", "give key_file or key_env, not both"))
        name = "KONGACME_TEST_UNSET_%d" % os.getpid()
        [(path, message)] = self.problems({"key_env": name})
        self.assertEqual((path, message), ("storage_encryption.key_env", f"environment variable {name} is not set"))

    def test_storage_from_config(self) -> None:
        """storage_from_config wraps the provider only when encryption is enabled."""
        clock = Clock()
        acme = AcmeConfig(account_email="a@example.com", tos_accepted=True, storage="shm")
        self.assertIsInstance(storage_from_config(acme, "/nonexistent", clock), MemoryStorage)
        path = self.key_file(base64.b64encode(KEY))
        storage = storage_from_config(acme, "/nonexistent", clock, StorageEncryptionConfig(key_file=path))
        self.assertIsInstance(storage, EncryptedAtomicStorage)
        self.assertIsInstance(storage.wrapped, MemoryStorage)
        self.assertIsInstance(
            storage_from_config(acme, "/nonexistent", clock, StorageEncryptionConfig()), MemoryStorage
        )
