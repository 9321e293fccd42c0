"""
Tests for kongacme.storage.redis, against a real ``redis-server`` started
per test (:mod:`tests.redisfixture`).
"""

from __future__ import annotations

from typing import Any

import txredisapi
from twisted.internet import reactor, ssl
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from kongacme.config.acme import AcmeConfig
from kongacme.config.storage import RedisExtraOptions, RedisStorageConfig, StorageConfig
from kongacme.interfaces import IAtomicStorage, IStorage
from kongacme.storage import keys, storage_from_config
from kongacme.storage.locks import StorageLocker
from kongacme.storage.redis import RedisStorage, StorageUnavailable
from tests.lock_conformance import LockConformanceMixin
from tests.pebble import free_port
from tests.redisfixture import RedisServer
from tests.storage_conformance import StorageConformanceMixin

#: A namespace with glob characters: listing must escape it too.
NAMESPACE = "kongacme*[test]:"
#: The timeout (seconds) of the failure tests, and what "within" allows.
SHORT_TIMEOUT = 0.3
LATENESS = 0.5


def sleep(seconds: float) -> Deferred[None]:
    return deferLater(reactor, seconds, lambda: None)


class RedisStorageConformanceTests(StorageConformanceMixin, LockConformanceMixin, TestCase):
    """
    Tests for RedisStorage: the IStorage and IAtomicStorage conformance
    suites against a real Redis, in a namespace full of glob characters.
    """

    supports_injected_clock = False
    short_ttl = 1.0
    expiry_slack = 0.1

    async def make_storage(self) -> tuple[RedisStorage, None]:
        server = await RedisServer.start(self)
        return server.storage(namespace=NAMESPACE), None


class RedisLayoutTests(TestCase):
    """
    Tests for RedisStorage's Redis layout: exactly Kong's keys, values and
    TTLs, so that Kong nodes can share the database.
    """

    async def setUp(self) -> None:
        self.server = await RedisServer.start(self)

    async def test_namespaced_keys_and_raw_values(self) -> None:
        """
        A key is stored as namespace + key with the value's exact bytes
        (every byte value), and list strips the namespace again.
        """
        storage = self.server.storage(namespace="ns:")
        value = bytes(range(256)) * 2
        name = keys.cert_key("*.example.com")
        await storage.set(name, value)
        self.assertEqual(self.server.command("GET", b"ns:" + name.encode()), value)
        self.assertEqual(self.server.command("KEYS", "*"), [b"ns:kong_acme:cert_key:*.example.com"])
        self.assertEqual(await storage.list(keys.CERT_KEY_PREFIX), [name])

    async def test_reads_what_kong_wrote(self) -> None:
        """
        Values written by another client (Kong) under the namespace are
        read, listed and deleted.
        """
        storage = self.server.storage(namespace="kong-ns")
        renew = b'{"host":"a.example","expire_at":1}'
        self.server.command("SET", b"kong-nskong_acme:renew_config:a.example", renew)
        self.server.command("SET", b"kong-ns" + keys.http01_token("tok").encode(), b"tok.thumb")
        self.assertEqual(await storage.list(keys.RENEW_CONFIG_PREFIX), [keys.renew_config("a.example")])
        self.assertEqual(await storage.get("tok#http-01"), b"tok.thumb")
        await storage.delete("tok#http-01")
        self.assertIsNone(self.server.command("GET", b"kong-nstok#http-01"))

    async def test_ttls(self) -> None:
        """
        set/add with a TTL use PX (milliseconds, never 0), without one the
        key does not expire; compare_and_set keeps those semantics (ttl None
        removes an expiry).
        """
        storage = self.server.storage()
        await storage.set("a", b"v", ttl=30)
        await storage.add("b", b"v", ttl=0.0001)
        await storage.set("c", b"v", ttl=30)
        await storage.set("c", b"w")
        pttl_a = self.server.command("PTTL", "a")
        self.assertTrue(29_000 < pttl_a <= 30_000, pttl_a)
        self.assertEqual(self.server.command("PTTL", "c"), -1)
        self.assertTrue(await storage.compare_and_set("a", b"v", b"v2"))
        self.assertEqual(self.server.command("PTTL", "a"), -1)
        self.assertTrue(await storage.compare_and_set("a", b"v2", b"v3", ttl=5))
        self.assertTrue(4_000 < self.server.command("PTTL", "a") <= 5_000)
        self.assertEqual(self.server.command("GET", "a"), b"v3")

    async def test_update_lock_interop(self) -> None:
        """
        A lock taken by Kong (add of "placeholder") keeps our locker out,
        and ours keeps Kong's add out.
        """
        storage = self.server.storage(namespace="ns:")
        name = keys.update_lock("x.example")
        raw_name = b"ns:" + name.encode()
        self.server.command("SET", raw_name, keys.UPDATE_LOCK_VALUE, "NX", "PX", 30000)
        self.assertIsNone(await StorageLocker(storage).acquire(name, 10))
        self.server.command("DEL", raw_name)
        lease = await StorageLocker(storage).acquire(name, 10)
        self.assertIsNone(self.server.command("SET", raw_name, keys.UPDATE_LOCK_VALUE, "NX", "PX", 30000))
        self.assertTrue(await lease.release())

    async def test_namespace_isolation(self) -> None:
        """
        Two namespaces do not see each other's keys; an empty namespace
        sees the raw names.
        """
        a = self.server.storage(namespace="a:")
        b = self.server.storage(namespace="b:")
        raw = self.server.storage()
        await a.set("k", b"from a")
        await b.set("k", b"from b")
        await b.set("only-b", b"v")
        self.assertEqual(await a.get("k"), b"from a")
        self.assertIsNone(await a.get("only-b"))
        self.assertEqual(await a.list(""), ["k"])
        self.assertEqual(sorted(await b.list("")), ["k", "only-b"])
        self.assertEqual(sorted(await raw.list("")), ["a:k", "b:k", "b:only-b"])
        await b.delete("k")
        self.assertEqual(await a.get("k"), b"from a")
        self.assertFalse(await a.add("k", b"again"))
        self.assertTrue(await b.add("k", b"again"))

    async def test_list_many(self) -> None:
        """
        Listing walks every SCAN page (scan_count small), returns each key
        once, and leaves out keys that are not UTF-8.
        """
        storage = self.server.storage(namespace="n:", scan_count=3)
        names = [keys.cert_key("h%d.example" % i) for i in range(300)]
        for name in names:
            self.server.command("SET", b"n:" + name.encode(), b"v")
        self.server.command("SET", b"n:kong_acme:cert_key:\xff\xfe", b"v")
        self.server.command("SET", b"other:kong_acme:cert_key:x", b"v")
        listed = await storage.list(keys.CERT_KEY_PREFIX)
        self.assertEqual(len(listed), len(set(listed)))
        self.assertEqual(sorted(listed), sorted(names))

    async def test_wrong_type(self) -> None:
        """
        A key of another Redis type (another program's) fails the operation
        with Redis's WRONGTYPE reply, not as "unavailable".
        """
        self.server.command("RPUSH", "list", "x")
        storage = self.server.storage()
        e = await self.assertFailure(storage.get("list"), txredisapi.ResponseError)
        self.assertIn("WRONGTYPE", str(e))
        self.assertEqual(await storage.get("other"), None)


class RedisConnectionTests(TestCase):
    """
    Tests for RedisStorage's connection: authentication, database choice,
    TLS, and clear, timely failures while Redis is unavailable.
    """

    async def assertUnavailable(
        self, d: Deferred, *fragments: str, timeout: float = SHORT_TIMEOUT
    ) -> StorageUnavailable:
        """``d`` fails with StorageUnavailable, within ``timeout``, naming each fragment."""
        started = reactor.seconds()
        e = await self.assertFailure(d, StorageUnavailable)
        self.assertLess(reactor.seconds() - started, timeout + LATENESS)
        for fragment in fragments:
            self.assertIn(fragment, str(e))
        return e

    async def eventually(self, storage: RedisStorage, limit: float = 10.0) -> None:
        """Wait until ``storage`` answers again (reconnected)."""
        deadline = reactor.seconds() + limit
        while True:
            try:
                await storage.get("probe")
                return
            except StorageUnavailable:
                if reactor.seconds() > deadline:
                    raise
                await sleep(0.05)

    async def test_password(self) -> None:
        """
        With the right password everything works; a wrong one, or none,
        fails each operation with a StorageUnavailable naming Redis's
        refusal.
        """
        server = await RedisServer.start(self, password="s3cret")
        good = server.storage()
        await good.set("k", b"v")
        self.assertEqual(await good.get("k"), b"v")
        wrong = server.storage(password="nope", timeout=SHORT_TIMEOUT)
        store = "redis 127.0.0.1:%d" % server.port
        await self.assertUnavailable(wrong.get("k"), store, "AUTH failed", "WRONGPASS")
        await self.assertUnavailable(wrong.set("k", b"x"), "WRONGPASS")
        missing = server.storage(password=None, timeout=SHORT_TIMEOUT)
        await self.assertUnavailable(missing.get("k"), "PING failed", "NOAUTH")
        self.assertEqual(await good.get("k"), b"v")

    async def test_acl_user(self) -> None:
        """
        username + password authenticate as a Redis 6 ACL user; a wrong
        user name fails clearly.
        """
        server = await RedisServer.start(self, password="admin", users={"acme": "pw"})
        storage = server.storage(username="acme", password="pw")
        await storage.set("k", b"v")
        self.assertEqual(server.command("GET", "k"), b"v")
        stranger = server.storage(username="nobody", password="pw", timeout=SHORT_TIMEOUT)
        await self.assertUnavailable(stranger.get("k"), "AUTH as 'nobody' failed", "WRONGPASS")

    async def test_database(self) -> None:
        """
        Each database is its own key space; a database the server does not
        have fails clearly.
        """
        server = await RedisServer.start(self)
        zero = server.storage()
        three = server.storage(database=3)
        await zero.set("k", b"zero")
        await three.set("k", b"three")
        self.assertEqual(await zero.get("k"), b"zero")
        self.assertEqual(await three.get("k"), b"three")
        self.assertEqual(await three.list(""), ["k"])
        self.assertEqual(server.command("GET", "k"), b"zero")
        missing = server.storage(database=99, timeout=SHORT_TIMEOUT)
        await self.assertUnavailable(missing.get("k"), "SELECT 99 failed")

    async def test_nothing_listening(self) -> None:
        """
        With nothing listening, an operation fails within the timeout
        naming the refused connection.
        """
        storage = RedisStorage(reactor, port=free_port(), timeout=SHORT_TIMEOUT)
        self.addCleanup(storage.close)
        await self.assertUnavailable(storage.get("k"), "GET: no connection within 0.3 s", "could not connect")

    async def test_outage_and_recovery(self) -> None:
        """
        While Redis is stopped every operation fails within the timeout
        with StorageUnavailable; once it is back on the same port the same
        storage works again by itself.
        """
        server = await RedisServer.start(self)
        storage = server.storage(timeout=SHORT_TIMEOUT)
        await storage.set("k", b"v")
        await server.stop()
        await self.assertUnavailable(storage.get("k"), "GET")
        await self.assertUnavailable(storage.set("k", b"w"), "SET")
        await self.assertUnavailable(storage.add("k", b"w"), "SET NX")
        await self.assertUnavailable(storage.list(""), "SCAN")
        await self.assertUnavailable(storage.compare_and_delete("k", b"v"), "EVAL")
        self.assertIsNotNone(storage.last_error)
        await server.restart()
        await self.eventually(storage)
        self.assertIsNone(storage.last_error)
        self.assertTrue(await storage.add("k", b"after"))
        self.assertEqual(await storage.get("k"), b"after")
        self.assertTrue(await storage.compare_and_delete("k", b"after"))

    async def test_stuck_server(self) -> None:
        """
        A server that accepts but does not answer (paused) fails operations
        within the timeout; the stuck connections are dropped, and the
        storage recovers when the server resumes.
        """
        server = await RedisServer.start(self)
        storage = server.storage(timeout=SHORT_TIMEOUT)
        await storage.set("k", b"v")
        server.pause()
        try:
            await self.assertUnavailable(storage.get("k"), "GET")
            await self.assertUnavailable(storage.get("k"), "GET")
        finally:
            server.resume()
        await self.eventually(storage)
        self.assertEqual(await storage.get("k"), b"v")

    async def test_close(self) -> None:
        """
        close fires once the connections are closed; later operations fail
        at once; closing again is harmless.
        """
        server = await RedisServer.start(self)
        storage = server.storage()
        await storage.set("k", b"v")
        self.assertIsNone(await storage.close())
        await self.assertUnavailable(storage.get("k"), "connection closed", timeout=0.0)
        self.assertIsNone(await storage.disconnect())
        self.assertIsNone(await RedisStorage(reactor).close())

    async def test_tls_unverified(self) -> None:
        """
        ssl without ssl_verify (Kong's default) talks TLS to a server whose
        certificate nothing trusts.
        """
        server = await RedisServer.start(self, password="pw", tls=True)
        storage = server.storage(namespace="t:")
        await storage.set("k", b"v")
        self.assertEqual(await storage.get("k"), b"v")
        self.assertEqual(await storage.list(""), ["k"])
        self.assertEqual(server.command("GET", "t:k"), b"v")

    async def test_tls_verified(self) -> None:
        """
        With ssl_verify the chain and server_name are checked: the right CA
        and name work; the system's trust store, or another name, fail with
        StorageUnavailable naming the TLS problem.
        """
        server = await RedisServer.start(self, tls=True)
        ca = ssl.Certificate.loadPEM(server.ca_pem)
        good = server.storage(ssl_verify=True, trust_root=ca)
        await good.set("k", b"v")
        self.assertEqual(await good.get("k"), b"v")
        untrusted = server.storage(ssl_verify=True, timeout=SHORT_TIMEOUT)
        await self.assertUnavailable(untrusted.get("k"), "certificate verify failed")
        misnamed = server.storage(ssl_verify=True, trust_root=ca, server_name="other.test", timeout=SHORT_TIMEOUT)
        e = await self.assertUnavailable(misnamed.get("k"))
        self.assertIn("other.test", str(e))

    async def test_plain_to_tls_server(self) -> None:
        """
        Plain TCP to a TLS-only server fails clearly instead of hanging.
        """
        server = await RedisServer.start(self, tls=True)
        storage = server.storage(ssl=False, timeout=SHORT_TIMEOUT)
        await self.assertUnavailable(storage.get("k"), "GET")

    async def test_from_config(self) -> None:
        """
        storage_from_config builds a RedisStorage from
        ``storage_config.redis`` (timeout in ms, namespace and scan_count
        from extra_options) that works against the server.
        """
        server = await RedisServer.start(self, password="pw")
        redis_config = RedisStorageConfig(
            host="127.0.0.1",
            port=server.port,
            database=2,
            password="pw",
            timeout=1500,
            extra_options=RedisExtraOptions(namespace="cfg:", scan_count=50),
        )
        config = AcmeConfig(
            account_email="ops@example.com", storage="redis", storage_config=StorageConfig(redis=redis_config)
        )
        storage = storage_from_config(config, self.mktemp(), reactor)
        self.addCleanup(storage.close)
        self.assertIsInstance(storage, RedisStorage)
        self.assertEqual(
            (storage.host, storage.port, storage.database, storage.namespace, storage.scan_count, storage.timeout),
            ("127.0.0.1", server.port, 2, "cfg:", 50, 1.5),
        )
        await storage.set("k", b"v")
        self.assertEqual(server.command("SELECT", 2), "OK")
        self.assertEqual(await storage.get("k"), b"v")


class RedisStorageUnitTests(SynchronousTestCase):
    """
    Tests for RedisStorage without a server: the injected reactor, lazy
    connecting, configuration and misuse.
    """

    def test_interfaces(self) -> None:
        """RedisStorage provides IStorage and IAtomicStorage."""
        storage = RedisStorage(MemoryReactorClock())
        self.assertTrue(verifyObject(IStorage, storage))
        self.assertTrue(verifyObject(IAtomicStorage, storage))

    def test_lazy_and_injected_reactor(self) -> None:
        """
        Nothing connects until the first operation; then the injected
        reactor connects (with the timeout as connect timeout) and times
        the operation out.
        """
        clock = MemoryReactorClock()
        storage = RedisStorage(clock, host="10.1.2.3", port=6380, timeout=2.5)
        self.assertEqual(clock.tcpClients, [])
        d = storage.get("k")
        self.assertEqual({(h, p, t) for h, p, _, t, _ in clock.tcpClients}, {("10.1.2.3", 6380, 2.5)})
        self.assertNoResult(d)
        clock.advance(2.4)
        self.assertNoResult(d)
        clock.advance(0.1)
        e = self.failureResultOf(d, StorageUnavailable).value
        self.assertEqual(e.store, "redis 10.1.2.3:6380")
        self.assertEqual(str(e), "redis 10.1.2.3:6380 unavailable: GET: no connection within 2.5 s")
        closed = storage.close()
        clock.advance(0)
        self.successResultOf(closed)

    def test_from_config_defaults(self) -> None:
        """
        Kong's defaults: host 127.0.0.1 when unset, port 6379, database 0,
        timeout 2000 ms, empty namespace, scan_count 10, no TLS; an empty
        username or password means none.
        """
        s = RedisStorage.from_config(RedisStorageConfig(username="", password=""), MemoryReactorClock())
        self.assertEqual(
            (s.host, s.port, s.database, s.timeout, s.namespace, s.scan_count, s.ssl, s.username, s.password),
            ("127.0.0.1", 6379, 0, 2.0, "", 10, False, None, None),
        )

    def test_password_not_in_repr(self) -> None:
        """The password stays out of repr (logs)."""
        self.assertNotIn("hunter2", repr(RedisStorage(MemoryReactorClock(), password="hunter2")))

    def test_bad_settings(self) -> None:
        """Non-positive scan_count, timeout or pool_size, or a negative database, are refused."""
        for bad in ({"scan_count": 0}, {"timeout": 0}, {"pool_size": 0}, {"database": -1}):
            self.assertRaises(ValueError, RedisStorage, MemoryReactorClock(), **bad)

    def test_misuse_raises(self) -> None:
        """Misuse raises at once, before any connection is made."""
        clock = MemoryReactorClock()
        storage: Any = RedisStorage(clock)
        self.assertRaises(TypeError, storage.set, "k", "text")
        self.assertRaises(ValueError, storage.add, "k", b"v", 0)
        self.assertRaises(TypeError, storage.compare_and_set, "k", "old", b"new")
        self.assertRaises(TypeError, storage.compare_and_delete, "k", None)
        self.assertEqual(clock.tcpClients, [])
