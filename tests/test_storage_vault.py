"""
Tests for kongacme.storage.vault, against a real OpenBao dev server.
"""

from __future__ import annotations

import base64
import json
import os
import time
import uuid
from typing import Any, Callable

import attrs

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import PrivateCertificate
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import Site
from zope.interface.verify import verifyObject

from kongacme.config.acme import AcmeConfig
from kongacme.config.storage import StorageConfig, VaultStorageConfig
from kongacme.interfaces import IAtomicStorage, IStorage
from kongacme.storage import keys, storage_from_config
from kongacme.storage.errors import StorageError, StorageUnavailable
from kongacme.storage.keys import slash_to_dash
from kongacme.storage.vault import (
    NOTE,
    KubernetesAuth,
    TokenAuth,
    VaultAPI,
    VaultAuthError,
    VaultResponseError,
    VaultStorage,
    VaultUnavailable,
    decode_entry,
    encode_entry,
    key_from_name,
    vault_name,
)
from kongacme.testing import TestCA
from tests.baofixture import BaoServer, unique
from tests.lock_conformance import LockConformanceMixin
from tests.proxyhelpers import LogCapture
from tests.storage_conformance import StorageConformanceMixin

KV_PATH = "secret/kongacme"


def _pool(test_case: TestCase) -> HTTPConnectionPool:
    pool = HTTPConnectionPool(reactor, persistent=True)
    test_case.addCleanup(pool.closeCachedConnections)
    return pool


def _config(bao: BaoServer, **fields: Any) -> VaultStorageConfig:
    fields.setdefault("token", bao.token)
    fields.setdefault("kv_path", "secret/" + unique())
    fields.setdefault("timeout", 5000.0)
    return VaultStorageConfig(host=bao.host, port=bao.port, https=bao.tls, **fields)


def _storage(test_case: TestCase, bao: BaoServer, clock: Any = None, **fields: Any) -> VaultStorage:
    ca_bundle = fields.pop("ca_bundle", bao.ca_file)
    return VaultStorage.from_config(
        _config(bao, **fields), reactor, clock=clock, ca_bundle=ca_bundle, pool=_pool(test_case)
    )


class VaultStorageConformanceTests(StorageConformanceMixin, LockConformanceMixin, TestCase):
    """
    Tests for VaultStorage: the IStorage and IAtomicStorage conformance
    suites on a real OpenBao. Expiry is judged with the injected clock
    (Vault's own delete_version_after runs in real time and is checked in
    VaultLayoutTests).
    """

    @inlineCallbacks
    def make_storage(self) -> Any:
        bao = yield BaoServer.shared(self)
        clock = Clock()
        return _storage(self, bao, clock, kv_path="secret/" + unique()), clock

    def listed_form(self, key: str) -> str:
        return slash_to_dash(key)


class VaultLayoutTests(TestCase):
    """
    Tests for VaultStorage's layout in Vault: Kong's paths and data shape,
    so that Kong nodes and kongacme share one Vault, and Vault's own TTL.
    """

    @inlineCallbacks
    def setUp(self) -> Any:
        self.bao = yield BaoServer.shared(self)
        folder = unique()
        self.data = f"/v1/secret/data/{folder}/"
        self.metadata = f"/v1/secret/metadata/{folder}/"
        self.kv_path = "secret/" + folder
        self.storage = _storage(self, self.bao, kv_path=self.kv_path)

    @inlineCallbacks
    def test_kong_path_and_shape(self) -> Any:
        """
        A value lives at /v1/<mount>/data/<folder>/<key with "/" as "-">
        as {"value": text, "note": ...}: the fields Kong reads.
        """
        key = keys.account_key("https://acme.example/directory", "ops@example.com")
        yield self.storage.set(key, b'{"key":"PEM"}')
        name = key.replace("/", "-")
        body = yield self.bao.admin_ok("GET", self.data + name)
        self.assertEqual(body["data"]["data"], {"value": '{"key":"PEM"}', "note": NOTE})
        listing = yield self.bao.admin_ok("GET", self.metadata + "?list=true")
        self.assertEqual(listing["data"]["keys"], [name])

    @inlineCallbacks
    def test_reads_kong_values(self) -> Any:
        """
        A value written by Kong's adapter (value + lua-resty-acme's note) is
        read, listed, and seen as present by add.
        """
        yield self.bao.admin_ok(
            "POST",
            self.data + "kong_acme:cert_key:kong.example",
            {"data": {"value": '{"key":"k","cert":"c"}', "note": "managed by lua-resty-acme"}},
        )
        self.assertEqual((yield self.storage.get("kong_acme:cert_key:kong.example")), b'{"key":"k","cert":"c"}')
        self.assertEqual((yield self.storage.list(keys.CERT_KEY_PREFIX)), ["kong_acme:cert_key:kong.example"])
        self.assertFalse((yield self.storage.add("kong_acme:cert_key:kong.example", b"x")))

    @inlineCallbacks
    def test_binary_value_shape(self) -> Any:
        """
        A value that is not UTF-8 is stored as base64 with "encoding".
        """
        yield self.storage.set("bin", b"\xff\x00")
        body = yield self.bao.admin_ok("GET", self.data + "bin")
        self.assertEqual(body["data"]["data"], {"value": "/wA=", "encoding": "base64", "note": NOTE})

    @inlineCallbacks
    def test_ttl_metadata_and_expires_at(self) -> Any:
        """
        A TTL sets the key's delete_version_after (whole seconds rounded up,
        at least 1 s) and
        expires_at in the data; a later set without TTL clears both.
        """
        before = time.time()
        yield self.storage.set("t", b"v", ttl=0.25)
        meta = yield self.bao.admin_ok("GET", self.metadata + "t")
        self.assertEqual(meta["data"]["delete_version_after"], "1s")
        body = yield self.bao.admin_ok("GET", self.data + "t")
        self.assertLess(abs(body["data"]["data"]["expires_at"] - (before + 0.25)), 2)
        self.assertTrue(body["data"]["metadata"]["deletion_time"])
        yield self.storage.set("t", b"w", ttl=90.5)
        meta = yield self.bao.admin_ok("GET", self.metadata + "t")
        self.assertEqual(meta["data"]["delete_version_after"], "1m31s")
        yield self.storage.set("t", b"forever")
        meta = yield self.bao.admin_ok("GET", self.metadata + "t")
        self.assertEqual(meta["data"]["delete_version_after"], "0s")
        body = yield self.bao.admin_ok("GET", self.data + "t")
        self.assertEqual(body["data"]["metadata"]["deletion_time"], "")
        self.assertNotIn("expires_at", body["data"]["data"])

    @inlineCallbacks
    def test_vault_deletes_expired(self) -> Any:
        """
        In real time, Vault itself deletes an expired version (what a Kong
        node sees); the store then reports it absent and add takes it over.
        """
        yield self.storage.set(keys.update_lock("a.example"), b"placeholder", ttl=1)
        yield _sleep(1.3)
        status, body = yield self.bao.admin("GET", self.data + "kong_acme:update_lock:a.example")
        self.assertEqual(status, 404)
        self.assertEqual(body["data"]["metadata"]["version"], 1)
        self.assertIsNone((yield self.storage.get(keys.update_lock("a.example"))))
        self.assertTrue((yield self.storage.add(keys.update_lock("a.example"), b"mine", 30)))

    @inlineCallbacks
    def test_compare_and_delete_tombstone(self) -> Any:
        """
        compare_and_delete writes a tombstone without "value" (absent for
        Kong too) with CAS; the key is not listed and add writes over it.
        """
        yield self.storage.set("lock", b"token")
        self.assertTrue((yield self.storage.compare_and_delete("lock", b"token")))
        body = yield self.bao.admin_ok("GET", self.data + "lock")
        self.assertEqual(body["data"]["data"], {"deleted": True, "note": NOTE})
        self.assertEqual((yield self.storage.list("")), [])
        self.assertTrue((yield self.storage.add("lock", b"next")))
        self.assertEqual((yield self.storage.get("lock")), b"next")

    @inlineCallbacks
    def test_cas_loses_to_concurrent_writer(self) -> Any:
        """
        compare_and_set and compare_and_delete fail, and change nothing,
        when another writer got in between (CAS on the version read).
        """
        yield self.storage.set("k", b"a")

        def other_node() -> Deferred:
            return self.bao.admin_ok("POST", self.data + "k", {"data": {"value": "a", "note": "other node"}})

        racing = VaultStorage(_RacingAPI(self.storage.api, other_node), self.kv_path, reactor)
        self.assertFalse((yield racing.compare_and_set("k", b"a", b"b")))
        self.assertFalse((yield racing.compare_and_delete("k", b"a")))
        body = yield self.bao.admin_ok("GET", self.data + "k")
        self.assertEqual(body["data"]["data"], {"value": "a", "note": "other node"})
        self.assertEqual(body["data"]["metadata"]["version"], 3)

    @inlineCallbacks
    def test_corrupt_entry_absent(self) -> Any:
        """
        A secret with a value of the wrong type is logged, read as absent,
        and replaced by add.
        """
        logs = LogCapture("kongacme.storage.vault.VaultStorage").start(self)
        yield self.bao.admin_ok("POST", self.data + "bad", {"data": {"value": 42}})
        self.assertIsNone((yield self.storage.get("bad")))
        self.assertEqual([e["key"] for e in logs.events], ["bad"])
        self.assertIn("value is a int", logs.events[0]["reason"])
        self.assertTrue((yield self.storage.add("bad", b"good")))
        self.assertEqual((yield self.storage.get("bad")), b"good")

    @inlineCallbacks
    def test_escaped_names(self) -> Any:
        """
        Characters Vault refuses in paths are written ^XX and listed back.
        """
        yield self.storage.set("tab\there^", b"v")
        listing = yield self.bao.admin_ok("GET", self.metadata + "?list=true")
        self.assertEqual(listing["data"]["keys"], ["tab^09here^5E"])
        self.assertEqual((yield self.storage.list("tab")), ["tab\there^"])

    @inlineCallbacks
    def test_mount_only_kv_path(self) -> Any:
        """
        Kong's default kv_path "acme" is the mount itself:
        /v1/acme/data/<key>.
        """
        mount = unique("acme")
        yield self.bao.admin_ok("POST", f"/v1/sys/mounts/{mount}", {"type": "kv", "options": {"version": "2"}})
        storage = _storage(self, self.bao, kv_path=mount)
        yield storage.set("kong_acme:renew_last_run", b"2026-01-01 00:00:00")
        body = yield self.bao.admin_ok("GET", f"/v1/{mount}/data/kong_acme:renew_last_run")
        self.assertEqual(body["data"]["data"]["value"], "2026-01-01 00:00:00")

    @inlineCallbacks
    def test_missing_mount(self) -> Any:
        """
        A kv_path whose mount does not exist is an error naming kv_path,
        not an empty store.
        """
        mount = unique("nomount")
        storage = _storage(self, self.bao, kv_path=f"{mount}/acme")
        e = yield self.assertFailure(storage.get("k"), VaultResponseError)
        self.assertIn("kv_path", str(e))
        self.assertIn(f"/v1/{mount}/data/acme/k", str(e))


class VaultAuthTests(TestCase):
    """
    Tests for VaultStorage's authentication: tokens, and Kubernetes logins
    reused until their lease nears its end.
    """

    @inlineCallbacks
    def setUp(self) -> Any:
        self.bao = yield BaoServer.shared(self)
        self.kv_path = "secret/" + unique()
        self.auth_path = unique("k8s")

    @inlineCallbacks
    def test_wrong_token(self) -> Any:
        """
        A token Vault does not know fails every operation with
        VaultAuthError naming the status and Vault's message.
        """
        storage = _storage(self, self.bao, token="not-a-token", kv_path=self.kv_path)
        e = yield self.assertFailure(storage.get("k"), VaultAuthError)
        self.assertIn("HTTP 403", str(e))
        self.assertIn("permission denied", str(e))
        yield self.assertFailure(storage.set("k", b"v"), VaultAuthError)

    @inlineCallbacks
    def _kubernetes(self, authenticated: bool = True, ttl: str = "1h") -> Any:
        """Enable kubernetes auth with a local TokenReview server; return the review counter."""
        reviews = _TokenReviews(authenticated)
        ca = TestCA.create()
        certified = ca.issue(["localhost"])
        certificate = PrivateCertificate.loadPEM(certified.key_pem() + certified.chain_pem())
        port = _serve(self, reviews.root(), certificate)
        yield self.bao.admin_ok("POST", f"/v1/sys/auth/{self.auth_path}", {"type": "kubernetes"})
        yield self.bao.admin_ok(
            "POST",
            f"/v1/auth/{self.auth_path}/config",
            {
                "kubernetes_host": f"https://localhost:{port.getHost().port}",
                "kubernetes_ca_cert": ca.ca_pem().decode(),
                "disable_local_ca_jwt": True,
            },
        )
        policy = 'path "secret/*" { capabilities = ["create", "read", "update", "delete", "list"] }'
        yield self.bao.admin_ok("POST", f"/v1/sys/policies/acl/{self.auth_path}", {"policy": policy})
        yield self.bao.admin_ok(
            "POST",
            f"/v1/auth/{self.auth_path}/role/kongacme",
            {
                "bound_service_account_names": ["kongacme"],
                "bound_service_account_namespaces": ["default"],
                "token_policies": [self.auth_path],
                "token_ttl": ttl,
            },
        )
        jwt_path = os.path.abspath(self.mktemp())
        with open(jwt_path, "w") as f:
            f.write(_service_account_jwt(reviews.uid) + "\n")
        return reviews, jwt_path

    def _kubernetes_storage(self, jwt_path: str, clock: Any = None) -> VaultStorage:
        return _storage(
            self,
            self.bao,
            clock,
            token=None,
            kv_path=self.kv_path,
            auth_method="kubernetes",
            auth_path=self.auth_path,
            auth_role="kongacme",
            jwt_path=jwt_path,
        )

    @inlineCallbacks
    def test_kubernetes_login_reused(self) -> Any:
        """
        Kubernetes auth logs in once (one TokenReview), concurrent first
        operations included, and reuses the token for every operation.
        """
        reviews, jwt_path = yield self._kubernetes()
        storage = self._kubernetes_storage(jwt_path)
        yield gatherResults([storage.set("k%d" % i, b"v") for i in range(5)])
        for i in range(5):
            self.assertEqual((yield storage.get("k%d" % i)), b"v")
        self.assertEqual(sorted((yield storage.list("k"))), ["k%d" % i for i in range(5)])
        self.assertTrue((yield storage.add("lock", b"t", 30)))
        self.assertEqual(reviews.count, 1)
        auth = storage.api.auth
        assert isinstance(auth, KubernetesAuth)
        self.assertEqual(auth.logins, 1)

    @inlineCallbacks
    def test_kubernetes_relogin_after_revoke(self) -> Any:
        """
        When Vault refuses the token (revoked), the store logs in again once
        and the operation succeeds.
        """
        reviews, jwt_path = yield self._kubernetes()
        storage = self._kubernetes_storage(jwt_path)
        yield storage.set("k", b"v")
        yield self.bao.admin_ok("POST", f"/v1/sys/leases/revoke-prefix/auth/{self.auth_path}/login")
        self.assertEqual((yield storage.get("k")), b"v")
        self.assertEqual(reviews.count, 2)
        self.assertEqual((yield storage.get("k")), b"v")
        self.assertEqual(reviews.count, 2)

    @inlineCallbacks
    def test_kubernetes_relogin_near_lease_end(self) -> Any:
        """
        The token is replaced before its lease ends: with a 1 h lease, no
        new login at 58 minutes, a new one at 59.5 (less than 60 s left).
        """
        reviews, jwt_path = yield self._kubernetes(ttl="1h")
        clock = Clock()
        clock.advance(time.time())
        storage = self._kubernetes_storage(jwt_path, clock)
        yield storage.get("k")
        clock.advance(58 * 60)
        yield storage.get("k")
        self.assertEqual(reviews.count, 1)
        clock.advance(90)
        yield storage.get("k")
        self.assertEqual(reviews.count, 2)

    @inlineCallbacks
    def test_kubernetes_login_refused(self) -> Any:
        """
        A login Vault refuses (TokenReview says not authenticated) fails the
        operation with VaultAuthError saying so; the next operation tries
        again.
        """
        reviews, jwt_path = yield self._kubernetes(authenticated=False)
        storage = self._kubernetes_storage(jwt_path)
        e = yield self.assertFailure(storage.get("k"), VaultAuthError)
        self.assertIn("login refused", str(e))
        self.assertIn(f"/v1/auth/{self.auth_path}/login", str(e))
        yield self.assertFailure(storage.get("k"), VaultAuthError)
        self.assertEqual(reviews.count, 2)

    @inlineCallbacks
    def test_kubernetes_missing_jwt(self) -> Any:
        """
        An unreadable jwt_path fails with VaultAuthError naming the file.
        """
        yield self._kubernetes()
        storage = self._kubernetes_storage("/nonexistent/token")
        e = yield self.assertFailure(storage.get("k"), VaultAuthError)
        self.assertIn("/nonexistent/token", str(e))


class VaultTLSTests(TestCase):
    """
    Tests for VaultStorage over https: tls_verify and tls_server_name.
    """

    @inlineCallbacks
    def setUp(self) -> Any:
        self.bao = yield BaoServer.shared(self, tls=True)

    @inlineCallbacks
    def test_verified(self) -> Any:
        """
        With the CA trusted, https works by IP and with tls_server_name
        naming the certificate.
        """
        for storage in (_storage(self, self.bao), _storage(self, self.bao, tls_server_name="localhost", kv_path="secret/" + unique())):
            yield storage.set("k", b"v")
            self.assertEqual((yield storage.get("k")), b"v")

    @inlineCallbacks
    def test_wrong_server_name(self) -> Any:
        """
        A tls_server_name the certificate does not name fails with
        VaultUnavailable saying the TLS handshake failed.
        """
        storage = _storage(self, self.bao, tls_server_name="other.example")
        e = yield self.assertFailure(storage.get("k"), VaultUnavailable)
        self.assertIn("TLS handshake failed", str(e))

    @inlineCallbacks
    def test_untrusted(self) -> Any:
        """
        Without the CA (system trust only) the handshake fails; with
        tls_verify false it goes through.
        """
        e = yield self.assertFailure(_storage(self, self.bao, ca_bundle=None).get("k"), VaultUnavailable)
        self.assertIn("TLS handshake failed", str(e))
        storage = _storage(self, self.bao, ca_bundle=None, tls_verify=False, tls_server_name="other.example")
        yield storage.set("k", b"v")
        self.assertEqual((yield storage.get("k")), b"v")


class VaultUnavailableTests(TestCase):
    """
    Tests for VaultStorage when Vault is down, silent or failing.
    """

    @inlineCallbacks
    def test_server_down(self) -> Any:
        """
        A stopped server fails operations at once with VaultUnavailable
        (connection refused), and they work again once a server is back.
        """
        bao = yield BaoServer.start(self)
        storage = _storage(self, bao)
        yield storage.set("k", b"v")
        bao.stop()
        started = time.monotonic()
        e = yield self.assertFailure(storage.get("k"), VaultUnavailable)
        self.assertLess(time.monotonic() - started, 2)
        self.assertIn("connection refused", str(e))
        self.assertIn(bao.url, str(e))
        yield self.assertFailure(storage.list(""), VaultUnavailable)

    @inlineCallbacks
    def test_timeout(self) -> Any:
        """
        A server that accepts but never answers fails each operation with
        VaultUnavailable once the timeout (ms) has passed.
        """
        factory = Factory.forProtocol(Protocol)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        config = VaultStorageConfig(port=port.getHost().port, token="t", kv_path=KV_PATH, timeout=300.0)
        storage = VaultStorage.from_config(config, reactor, pool=_pool(self))
        started = time.monotonic()
        e = yield self.assertFailure(storage.add("k", b"v"), VaultUnavailable)
        self.assertGreaterEqual(time.monotonic() - started, 0.29)
        self.assertLess(time.monotonic() - started, 1.5)
        self.assertIn("timeout", str(e))

    @inlineCallbacks
    def test_sealed(self) -> Any:
        """
        A sealed Vault (HTTP 503) fails with VaultUnavailable quoting
        Vault's message.
        """
        bao = yield BaoServer.start(self)
        storage = _storage(self, bao)
        yield bao.admin_ok("POST", "/v1/sys/seal")
        e = yield self.assertFailure(storage.get("k"), VaultUnavailable)
        self.assertIn("HTTP 503", str(e))
        self.assertIn("sealed", str(e))


class VaultFormatTests(SynchronousTestCase):
    """
    Tests for the name and data formats (no server).
    """

    def test_names(self) -> None:
        """
        Kong's keys map to Kong's names ("/" → "-"); what Vault refuses is
        escaped reversibly.
        """
        key = keys.account_key("https://acme.example/dir", "a@b.example")
        self.assertEqual(vault_name(key), key.replace("/", "-"))
        for key in ["a\tb", "^", "x^41y", "\x00", "a\u200bb", ".", "..", "...", "ünï"]:
            name = vault_name(key)
            self.assertTrue(name.isprintable(), name)
            self.assertNotIn(name, (".", ".."))
            self.assertEqual(key_from_name(name), key)

    def test_entries(self) -> None:
        """
        Values round-trip through the data shape; foreign shapes are absent
        or refused with ValueError.
        """
        for value in [b"", b"text \xc3\xbc", b"\xff\xfe", bytes(range(256))]:
            self.assertEqual(decode_entry(encode_entry(value, 12.5)), (value, 12.5))
            self.assertEqual(decode_entry(json.loads(json.dumps(encode_entry(value, None)))), (value, None))
        self.assertEqual(decode_entry({"deleted": True}), (None, None))
        for bad in [None, [], {"value": 1}, {"value": "x", "expires_at": "1"}, {"value": "x", "encoding": "rot13"}]:
            self.assertRaises(ValueError, decode_entry, bad)

    def test_errors(self) -> None:
        """
        Vault's errors derive from the storage layer's shared bases:
        unavailability is a StorageUnavailable, the rest StorageErrors.
        """
        self.assertTrue(issubclass(VaultUnavailable, StorageUnavailable))
        for error in (VaultAuthError, VaultResponseError):
            self.assertTrue(issubclass(error, StorageError))
            self.assertFalse(issubclass(error, StorageUnavailable))
        e = VaultResponseError("http://vault/v1/x", "HTTP 418", 418)
        self.assertEqual((e.url, e.reason, e.status, str(e)), ("http://vault/v1/x", "HTTP 418", 418, "http://vault/v1/x: HTTP 418"))

    def test_interfaces(self) -> None:
        """
        VaultStorage provides IStorage and IAtomicStorage.
        """
        storage = VaultStorage.from_config(VaultStorageConfig(token="t"), Clock(), client=HTTPClient(Agent(reactor)))
        self.assertTrue(verifyObject(IStorage, storage))
        self.assertTrue(verifyObject(IAtomicStorage, storage))

    def test_storage_from_config(self) -> None:
        """
        storage: vault makes a VaultStorage from storage_config.vault.
        """
        config = AcmeConfig(
            account_email="ops@example.com",
            storage="vault",
            storage_config=StorageConfig(vault=VaultStorageConfig(token="t", kv_path="secret/acme")),
        )
        storage = storage_from_config(config, "/nonexistent", reactor)
        self.assertIsInstance(storage, VaultStorage)
        self.assertEqual(storage.api.base_url, "http://127.0.0.1:8200")
        self.assertIsInstance(storage.api.auth, TokenAuth)
        self.assertIsInstance(storage.api, VaultAPI)


# -- helpers ----------------------------------------------------------------


def _sleep(seconds: float) -> Deferred:
    return deferLater(reactor, seconds, lambda: None)


def _serve(test_case: TestCase, resource: Resource, certificate: PrivateCertificate) -> Any:
    """
    Serve ``resource`` over HTTPS on 127.0.0.1; in cleanup, stop listening
    and drop the connections Vault keeps alive (the shared server outlives
    the test).
    """
    site = _TrackingSite(resource)
    port = reactor.listenSSL(0, site, certificate.options(), interface="127.0.0.1")

    @inlineCallbacks
    def close() -> Any:
        yield port.stopListening()
        for channel in list(site.channels):
            channel.transport.abortConnection()
        while site.channels:
            yield _sleep(0.01)

    test_case.addCleanup(close)
    return port


class _TrackingSite(Site):
    """A Site (HTTP/1.1 only) that knows its open connections."""

    protocol = HTTPChannel

    def __init__(self, resource: Resource):
        super().__init__(resource)
        self.channels: set[Any] = set()

    def buildProtocol(self, addr: Any) -> Any:
        channel = super().buildProtocol(addr)
        self.channels.add(channel)
        lost = channel.connectionLost

        def connection_lost(reason: Any) -> None:
            self.channels.discard(channel)
            lost(reason)

        channel.connectionLost = connection_lost
        return channel


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _service_account_jwt(uid: str) -> str:
    """A signed legacy service account token for default/kongacme (Vault checks it via TokenReview)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    header = {"alg": "RS256", "typ": "JWT"}
    claims = {
        "iss": "kubernetes/serviceaccount",
        "kubernetes.io/serviceaccount/namespace": "default",
        "kubernetes.io/serviceaccount/secret.name": "kongacme-token",
        "kubernetes.io/serviceaccount/service-account.name": "kongacme",
        "kubernetes.io/serviceaccount/service-account.uid": uid,
        "sub": "system:serviceaccount:default:kongacme",
    }
    signing_input = _b64url(json.dumps(header).encode()) + "." + _b64url(json.dumps(claims).encode())
    signature = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return signing_input + "." + _b64url(signature)


@attrs.define
class _RacingAPI:
    """A VaultAPI in front of which another node writes just before each CAS write."""

    api: VaultAPI
    race: Callable[[], Deferred]

    def url(self, path: str) -> str:
        return self.api.url(path)

    @inlineCallbacks
    def request(self, method: str, path: str, payload: Any = None) -> Any:
        if method == "POST" and isinstance(payload, dict) and "options" in payload:
            yield self.race()
        result = yield self.api.request(method, path, payload)
        return result


class _TokenReviews:
    """A Kubernetes API answering TokenReviews, counting them."""

    def __init__(self, authenticated: bool):
        self.authenticated = authenticated
        self.count = 0
        self.uid = str(uuid.uuid4())

    def root(self) -> Resource:
        root = Resource()
        node = root
        for segment in (b"apis", b"authentication.k8s.io", b"v1"):
            child = Resource()
            node.putChild(segment, child)
            node = child
        node.putChild(b"tokenreviews", _TokenReviewResource(self))
        return root


class _TokenReviewResource(Resource):
    isLeaf = True

    def __init__(self, reviews: _TokenReviews):
        super().__init__()
        self._reviews = reviews

    def render_POST(self, request: Any) -> bytes:
        self._reviews.count += 1
        review = json.loads(request.content.read())
        status: dict[str, Any] = {"authenticated": self._reviews.authenticated}
        if self._reviews.authenticated:
            status["user"] = {"username": "system:serviceaccount:default:kongacme", "uid": self._reviews.uid}
        else:
            status["error"] = "token expired"
        request.setHeader(b"content-type", b"application/json")
        review["status"] = status
        return json.dumps(review).encode()
