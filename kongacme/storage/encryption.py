"""
Optional encryption at rest of the private keys kongacme keeps in storage
(``storage_encryption:`` in the daemon config; off by default, because
Kong nodes cannot read encrypted keys).

A wrapper around any provider: values under Kong's
``kong_acme:cert_key:<host>`` (``{"key": PEM, "cert": PEM}``) and
``kong_acme:account:...`` (``{"key": PEM}``) keys have their ``"key"``
field replaced by ``kongacme-enc:v1:<base64(nonce + ciphertext)>``,
AES-256-GCM with the storage key's name as associated data (a value copied
under another key does not decrypt). Everything else (the certificate
chain, so inventories still work; other keys) passes through untouched.

Reading accepts both: an encrypted field is decrypted, a plaintext one
(written by Kong, or before encryption was turned on) is returned as it is
and logged once per key; it is encrypted on its next write.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from typing import TYPE_CHECKING, Any, Mapping, Optional

import attrs
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.logger import Logger
from zope.interface import implementer

from kongacme.storage._wrapper import ForwardingWrapper
from kongacme.interfaces import IAtomicStorage, IStorage
from kongacme.validators import provides
from kongacme.storage import keys
from kongacme.storage.errors import StoredCertificateError

if TYPE_CHECKING:
    from kongacme.config.daemon import StorageEncryptionConfig

#: What an encrypted ``"key"`` field starts with; the version names the
#: scheme (AES-256-GCM, 96-bit random nonce, AAD = the storage key).
PREFIX = "kongacme-enc:v1:"
KEY_BYTES = 32
NONCE_BYTES = 12

#: Keys whose values hold a private key in their ``"key"`` field.
SENSITIVE_PREFIXES = (keys.CERT_KEY_PREFIX, keys.ACCOUNT_PREFIX)


class EncryptionKeyError(ValueError):
    """
    The ``storage_encryption`` key is missing, unreadable or malformed.

    :ivar field: the config field at fault, e.g.
        ``storage_encryption.key_file``.
    :ivar reason: what is wrong.
    """

    def __init__(self, field: str, reason: str):
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")


def decode_key(text: Any, field: str) -> bytes:
    """
    The 32 key bytes from base64 text (standard or URL-safe alphabet,
    padding optional, surrounding whitespace ignored).

    :param field: names the source in errors.
    :raises EncryptionKeyError: if it is not base64 of 32 bytes.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("ascii")
        except UnicodeDecodeError:
            raise EncryptionKeyError(field, "not base64 text") from None
    text = text.strip()
    if not text:
        raise EncryptionKeyError(field, f"empty; expected {KEY_BYTES} random bytes in base64")
    padded = text + "=" * (-len(text) % 4)
    try:
        key = base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        raise EncryptionKeyError(field, "not base64 (standard or URL-safe)") from None
    if len(key) != KEY_BYTES:
        raise EncryptionKeyError(
            field, f"decodes to {len(key)} bytes, not {KEY_BYTES} (make one with: head -c 32 /dev/urandom | base64)"
        )
    return key


def load_key(config: "StorageEncryptionConfig", environ: Optional[Mapping[str, str]] = None) -> bytes:
    """
    The key ``config`` names, read now.

    :param environ: where ``key_env`` is looked up; default ``os.environ``.
    :raises EncryptionKeyError: naming ``storage_encryption.key_file`` or
        ``storage_encryption.key_env``.
    """
    if config.key_file is not None and config.key_env is not None:
        raise EncryptionKeyError("storage_encryption", "give key_file or key_env, not both")
    if config.key_file is not None:
        field = "storage_encryption.key_file"
        try:
            with open(config.key_file, "rb") as f:
                text = f.read(4096)
        except OSError as e:
            raise EncryptionKeyError(field, f"cannot read {config.key_file}: {e.strerror or e}") from None
        return decode_key(text, field)
    if config.key_env is not None:
        field = "storage_encryption.key_env"
        value = (os.environ if environ is None else environ).get(config.key_env)
        if value is None:
            raise EncryptionKeyError(field, f"environment variable {config.key_env} is not set")
        return decode_key(value, field)
    raise EncryptionKeyError("storage_encryption", "neither key_file nor key_env is given")


def is_sensitive(key: str) -> bool:
    """Whether values under ``key`` hold a private key."""
    return isinstance(key, str) and key.startswith(SENSITIVE_PREFIXES)


def _dump(obj: dict) -> bytes:
    # Kong's (and kongacme.storage.keys') compact form, so a decrypted value
    # is byte for byte what kongacme wrote.
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _key_object(value: bytes) -> Optional[dict]:
    """The JSON object in ``value`` if it has a string ``"key"``, else None."""
    try:
        obj = json.loads(value.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if isinstance(obj, dict) and isinstance(obj.get("key"), str):
        return obj
    return None


@implementer(IStorage)
@attrs.define
class EncryptedStorage(ForwardingWrapper):
    """
    An :class:`IStorage` that encrypts the private keys in the values it
    writes to ``_storage`` and decrypts them on the way back (see the
    module docstring). Values it does not recognise (not JSON with a
    string ``"key"``) pass through, so the wrapped store's own rules apply.

    A value that does not decrypt (another key, or copied from another
    storage key) fails ``get`` with :class:`StoredCertificateError`.

    Any other attribute (``close``, ``last_error``, ...) is the wrapped
    provider's.

    :ivar _storage: the provider being wrapped.
    :ivar _key: the 32-byte AES key.
    """

    log = Logger()

    _storage: IStorage = attrs.field(validator=provides(IStorage))
    _key: bytes = attrs.field(repr=False)
    _aead: AESGCM = attrs.field(init=False, repr=False)
    _plaintext_logged: set = attrs.field(init=False, factory=set, repr=False)

    @_key.validator
    def _check_key(self, attribute: Any, value: bytes) -> None:
        if not isinstance(value, bytes) or len(value) != KEY_BYTES:
            raise ValueError(f"the encryption key must be {KEY_BYTES} bytes")

    def __attrs_post_init__(self) -> None:
        self._aead = AESGCM(self._key)

    # -- the transformation -------------------------------------------------

    def seal(self, key: str, value: bytes) -> bytes:
        """``value`` as stored under ``key``: its private key encrypted."""
        if not is_sensitive(key) or not isinstance(value, bytes):
            return value
        obj = _key_object(value)
        if obj is None or obj["key"].startswith(PREFIX):
            return value
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, obj["key"].encode("utf-8"), key.encode("utf-8"))
        obj["key"] = PREFIX + base64.b64encode(nonce + sealed).decode("ascii")
        return _dump(obj)

    def unseal(self, key: str, value: Optional[bytes]) -> Optional[bytes]:
        """
        ``value`` read from ``key`` with its private key decrypted.

        :raises StoredCertificateError: if it does not decrypt.
        """
        if value is None or not is_sensitive(key):
            return value
        obj = _key_object(value)
        if obj is None:
            return value
        field = obj["key"]
        if not field.startswith(PREFIX):
            if key not in self._plaintext_logged:
                self._plaintext_logged.add(key)
                self.log.warn(
                    "{key}: private key stored unencrypted (written by Kong or before storage_encryption "
                    "was on); it is encrypted on its next write",
                    key=key,
                )
            return value
        try:
            raw = base64.b64decode(field[len(PREFIX):], validate=True)
            if len(raw) <= NONCE_BYTES:
                raise ValueError("too short")
            plain = self._aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], key.encode("utf-8"))
        except (binascii.Error, ValueError, InvalidTag):
            raise StoredCertificateError(
                key,
                "the private key does not decrypt with storage_encryption's key "
                "(a different key, or a value copied from another storage key)",
            ) from None
        obj["key"] = plain.decode("utf-8")
        return _dump(obj)

    # -- IStorage -----------------------------------------------------------

    def get(self, key: str) -> Deferred[Optional[bytes]]:
        return self._storage.get(key).addCallback(lambda value: self.unseal(key, value))

    def set(self, key: str, value: bytes, ttl: Optional[float] = None) -> Deferred[None]:
        return self._storage.set(key, self.seal(key, value), ttl)

    def add(self, key: str, value: bytes, ttl: Optional[float] = None) -> Deferred[bool]:
        return self._storage.add(key, self.seal(key, value), ttl)

    def delete(self, key: str) -> Deferred[None]:
        return self._storage.delete(key)

    def list(self, prefix: str) -> Deferred[list[str]]:
        return self._storage.list(prefix)


@implementer(IAtomicStorage)
@attrs.define
class EncryptedAtomicStorage(EncryptedStorage):
    """
    :class:`EncryptedStorage` for an :class:`IAtomicStorage`. The
    compare-and-swap operations compare decrypted values (ciphertexts
    differ on every write): read, compare, then swap against the exact
    stored bytes, so the swap stays atomic.
    """

    def __attrs_post_init__(self) -> None:
        if not IAtomicStorage.providedBy(self._storage):
            raise TypeError(f"storage must provide IAtomicStorage, not {self._storage!r}")
        super().__attrs_post_init__()

    def compare_and_set(self, key: str, expected: bytes, value: bytes, ttl: Optional[float] = None) -> Deferred[bool]:
        storage: Any = self._storage
        if not is_sensitive(key):
            return storage.compare_and_set(key, expected, value, ttl)
        return self._swap(key, expected, lambda raw: storage.compare_and_set(key, raw, self.seal(key, value), ttl))

    def compare_and_delete(self, key: str, expected: bytes) -> Deferred[bool]:
        storage: Any = self._storage
        if not is_sensitive(key):
            return storage.compare_and_delete(key, expected)
        return self._swap(key, expected, lambda raw: storage.compare_and_delete(key, raw))

    @inlineCallbacks
    def _swap(self, key: str, expected: bytes, swap: Any):
        raw = yield self._storage.get(key)
        if raw is None or self.unseal(key, raw) != expected:
            return False
        return (yield swap(raw))


def encrypted(storage: IStorage, key: bytes) -> EncryptedStorage:
    """
    Wrap ``storage`` to encrypt private keys with ``key``.

    :return: an :class:`EncryptedAtomicStorage` when ``storage`` provides
        :class:`IAtomicStorage`, else an :class:`EncryptedStorage`.
    """
    if IAtomicStorage.providedBy(storage):
        return EncryptedAtomicStorage(storage, key)
    return EncryptedStorage(storage, key)


__all__ = [
    "EncryptedAtomicStorage",
    "EncryptedStorage",
    "EncryptionKeyError",
    "PREFIX",
    "decode_key",
    "encrypted",
    "is_sensitive",
    "load_key",
]
