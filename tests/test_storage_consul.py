"""
Tests for kongacme.storage.consul (ConsulStorage) and
tests.consul_fake (FakeConsul).

No Consul server can be installed on the machines this project is tested on
(it is not in Debian, PyPI or npm), so everything here runs against
FakeConsul, a fake of Consul's KV HTTP API written from Consul's
documentation and ``agent/kvs_endpoint.go``: once served on a real local
port over real HTTP (so that treq's real transport, keep-alive, timeouts and
refused connections are exercised), once through treq.testing.StubTreq.
"""

from __future__ import annotations

import base64
import json
import math
import time
from typing import Any

import treq
from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from zope.interface.verify import verifyObject

from kongacme.config.acme import AcmeConfig
from kongacme.config.storage import ConsulStorageConfig, StorageConfig
from kongacme.interfaces import IAtomicStorage, IStorage
from kongacme.storage import keys, storage_from_config
from kongacme.storage.consul import ConsulError, ConsulStorage, ConsulUnavailable
from tests.consul_fake import MAX_VALUE_SIZE, FakeConsul, start_fake_consul
from kongacme.storage.locks import StorageLocker
from tests.lock_conformance import LockConformanceMixin
from tests.storage_conformance import StorageConformanceMixin
from tests.test_web_support import settle

#: A realistic "now" for the injected clocks (flags hold epoch milliseconds).
NOW = 1_760_000_000.0


def _result(d: Deferred) -> Any:
    """The result of an already-fired Deferred (raising its failure)."""
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "the Deferred has not fired"
    if hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


class _Served:
    """A FakeConsul on a real 127.0.0.1 port and an HTTP client for it, stopped with the test."""

    def __init__(self, test: TestCase, fake: FakeConsul):
        self.fake = fake
        self.port = start_fake_consul(reactor, fake=fake)
        self.number = self.port.getHost().port
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.http = treq.client.HTTPClient(Agent(reactor, pool=self.pool))
        test.addCleanup(self.stop)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.number}"

    def storage(self, clock: Clock, **kwargs: Any) -> ConsulStorage:
        kwargs.setdefault("timeout", 10.0)
        return ConsulStorage(self.http, reactor, base_url=self.url, clock=clock, **kwargs)

    @inlineCallbacks
    def stop(self) -> Any:
        yield self.pool.closeCachedConnections()
        if self.port.connected:
            yield self.port.stopListening()
        self.fake.release()
        yield settle()


class _ConsulConformance(StorageConformanceMixin, LockConformanceMixin):
    """What both conformance runs share: Consul's value limit and key transform."""

    supports_injected_clock = True
    max_value_size = MAX_VALUE_SIZE

    def listed_form(self, key: str) -> str:
        return keys.slash_to_dash(key)


class ConsulOverHTTPConformanceTests(_ConsulConformance, TestCase):
    """
    Tests for ConsulStorage: the IStorage and lock conformance suites against
    FakeConsul served on a real port, over real HTTP; expiry follows the
    injected clock (the TTL emulation reads it).
    """

    def make_storage(self) -> tuple[ConsulStorage, Clock]:
        clock = Clock()
        clock.advance(NOW)
        return _Served(self, FakeConsul()).storage(clock), clock


class ConsulStubTreqConformanceTests(_ConsulConformance, TestCase):
    """
    Tests for ConsulStorage: the conformance suites through StubTreq, with
    an ACL token required and a kv_path two levels deep.
    """

    def make_storage(self) -> tuple[ConsulStorage, Clock]:
        clock = Clock()
        clock.advance(NOW)
        fake = FakeConsul(tokens={"s3cret": "write"})
        storage = ConsulStorage(StubTreq(fake), clock, kv_path="/kong/acme/", token="s3cret")
        return storage, clock


class ConsulStorageTests(SynchronousTestCase):
    """
    Tests for ConsulStorage's requests and formats (lua-resty-acme's), through
    StubTreq.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.fake = FakeConsul()
        self.storage = ConsulStorage(StubTreq(self.fake), self.clock)

    def last(self) -> Any:
        return self.fake.requests[-1]

    def test_interfaces(self) -> None:
        """
        ConsulStorage provides IStorage and IAtomicStorage.
        """
        self.assertTrue(verifyObject(IStorage, self.storage))
        self.assertTrue(verifyObject(IAtomicStorage, self.storage))

    def test_set_format(self) -> None:
        """
        set PUTs the raw value to /v1/kv/acme/<key>; with a TTL, flags are
        the expiry in epoch milliseconds (lua-resty-acme's
        ``(ngx.now() + ttl) * 1000``), without one no flags (0).
        """
        self.clock.advance(0.25)
        _result(self.storage.set(keys.update_lock("a.example"), b"placeholder", ttl=30))
        request = self.last()
        self.assertEqual(
            (request.method, request.key, request.body), ("PUT", "acme/kong_acme:update_lock:a.example", b"placeholder")
        )
        self.assertEqual(request.args, {"flags": "%d" % ((NOW + 30.25) * 1000)})
        entry = self.fake.entries["acme/kong_acme:update_lock:a.example"]
        self.assertEqual(entry.flags, (NOW + 30.25) * 1000)
        _result(self.storage.set(keys.update_lock("a.example"), b"again"))
        self.assertEqual(self.last().args, {})
        self.assertEqual(self.fake.entries["acme/kong_acme:update_lock:a.example"].flags, 0)

    def test_add_format(self) -> None:
        """
        add reads the key, then PUTs with ?cas=0 (create only).
        """
        self.assertTrue(_result(self.storage.add("k", b"v", ttl=5)))
        get, put = self.fake.requests
        self.assertEqual((get.method, put.method), ("GET", "PUT"))
        self.assertEqual(put.args, {"cas": "0", "flags": "%d" % ((NOW + 5) * 1000)})

    def test_add_over_expired_uses_modify_index(self) -> None:
        """
        add over an expired value replaces it with ?cas=<its ModifyIndex>, in
        one write.
        """
        _result(self.storage.set("k", b"old", ttl=5))
        index = self.fake.entries["acme/k"].modify_index
        self.clock.advance(5)
        self.assertTrue(_result(self.storage.add("k", b"new")))
        self.assertEqual(self.last().args, {"cas": str(index)})
        self.assertEqual(self.fake.entries["acme/k"].value, b"new")

    def test_slash_keys(self) -> None:
        """
        "/" in a key is stored as "-" (Kong's Consul key), listed in that
        form, and either spelling reads the same entry.
        """
        key = keys.account_key("https://acme-v02.api.letsencrypt.org/directory", "ops@example.com")
        _result(self.storage.set(key, b"{}"))
        stored = "kong_acme:account:https:--acme-v02.api.letsencrypt.org-directory:b3BzQGV4YW1wbGUuY29t"
        self.assertEqual(list(self.fake.entries), ["acme/" + stored])
        self.assertEqual(_result(self.storage.list(keys.ACCOUNT_PREFIX)), [stored])
        self.assertEqual(_result(self.storage.get(stored)), b"{}")

    def test_expired_deleted_on_read(self) -> None:
        """
        get of an expired value deletes it with ?cas=<ModifyIndex> (as
        lua-resty-acme does) and reports it absent.
        """
        _result(self.storage.set("k", b"v", ttl=5))
        index = self.fake.entries["acme/k"].modify_index
        self.clock.advance(5)
        self.assertIsNone(_result(self.storage.get("k")))
        self.assertEqual((self.last().method, self.last().args), ("DELETE", {"cas": str(index)}))
        self.assertEqual(self.fake.entries, {})

    def test_list_drops_expired(self) -> None:
        """
        list leaves out expired keys and deletes them; it reads the prefix
        with ?recurse.
        """
        _result(self.storage.set("t1#http-01", b"v", ttl=5))
        _result(self.storage.set("t2#http-01", b"v"))
        self.clock.advance(6)
        self.assertEqual(_result(self.storage.list("t")), ["t2#http-01"])
        self.assertEqual(self.fake.requests[-2].args, {"recurse": ""})
        self.assertEqual(list(self.fake.entries), ["acme/t2#http-01"])

    def test_list_ignores_nested_and_other_folders(self) -> None:
        """
        list returns only keys directly in kv_path: not "acme/sub/x" (no
        Kong key holds a "/"), not "acme2/x".
        """
        self.fake.put("acme/kong_acme:cert_key:a", b"v")
        self.fake.put("acme/sub/kong_acme:cert_key:b", b"v")
        self.fake.put("acme2/kong_acme:cert_key:c", b"v")
        self.assertEqual(_result(self.storage.list("")), ["kong_acme:cert_key:a"])

    def test_kv_path(self) -> None:
        """
        kv_path may have slashes at either end (Kong adds the leading one)
        and several levels.
        """
        storage = ConsulStorage(StubTreq(self.fake), self.clock, kv_path="/kong/acme/")
        _result(storage.set("k", b"v"))
        self.assertEqual(list(self.fake.entries), ["kong/acme/k"])
        self.assertEqual(_result(storage.list("")), ["k"])

    def test_empty_value(self) -> None:
        """
        An empty value (Consul answers "Value": null) reads back as b"".
        """
        _result(self.storage.set("k", b""))
        self.assertEqual(_result(self.storage.get("k")), b"")

    def test_reads_kong_values(self) -> None:
        """
        A value written as Kong writes it (raw value, flags = expiry epoch
        ms; without TTL flags 0) reads back, and expires at that time.
        """
        renew = b'{"host":"a.example","expire_at":1}'
        self.fake.put("acme/kong_acme:renew_config:a.example", renew)
        self.fake.put("acme/tok#http-01", b"tok.thumb", flags=int((NOW + 3600) * 1000))
        self.assertEqual(_result(self.storage.get(keys.renew_config("a.example"))), renew)
        self.assertEqual(_result(self.storage.get(keys.http01_token("tok"))), b"tok.thumb")
        self.clock.advance(3600)
        self.assertIsNone(_result(self.storage.get(keys.http01_token("tok"))))

    def test_cas_loses_to_concurrent_write(self) -> None:
        """
        compare_and_set, compare_and_delete and add fail (False) when
        another writer changes the key between their read and their write:
        the write carries the ModifyIndex that was read.
        """
        fake = _MeddlingConsul()
        storage = ConsulStorage(StubTreq(fake), self.clock)
        _result(storage.set("k", b"mine"))
        fake.meddle = b"theirs"
        self.assertFalse(_result(storage.compare_and_set("k", b"mine", b"renewed")))
        self.assertEqual(fake.entries["acme/k"].value, b"theirs")
        _result(storage.set("k", b"mine"))
        fake.meddle = b"theirs"
        self.assertFalse(_result(storage.compare_and_delete("k", b"mine")))
        self.assertEqual(fake.entries["acme/k"].value, b"theirs")
        _result(storage.delete("k"))
        fake.meddle = b"theirs"
        self.assertFalse(_result(storage.add("k", b"mine")))
        self.assertEqual(fake.entries["acme/k"].value, b"theirs")

    def test_token_header(self) -> None:
        """
        The token goes in X-Consul-Token on every request, never in the URL.
        """
        fake = FakeConsul(tokens={"s3cret": "write"})
        storage = ConsulStorage(StubTreq(fake), self.clock, token="s3cret")
        _result(storage.set("k", b"v"))
        _result(storage.get("k"))
        self.assertEqual({r.token for r in fake.requests}, {"s3cret"})
        self.assertNotIn("token", fake.requests[0].args)

    def test_token_missing(self) -> None:
        """
        Without the token Consul requires: ConsulError 403 "Permission
        denied", naming the setting; list, which Consul answers by leaving
        entries out, fails too rather than answering [].
        """
        fake = FakeConsul(tokens={"s3cret": "write"})
        fake.put("acme/k", b"v")
        storage = ConsulStorage(StubTreq(fake), self.clock)
        e = self.failureResultOf(storage.get("k"), ConsulError).value
        self.assertNotIsInstance(e, ConsulUnavailable)
        self.assertEqual(e.status, 403)
        self.assertIn("Permission denied", str(e))
        self.assertIn("storage_config.consul.token", str(e))
        e = self.failureResultOf(storage.list(""), ConsulError).value
        self.assertIn("filtered by ACLs", str(e))

    def test_token_wrong(self) -> None:
        """
        An unknown token: ConsulError 403 "ACL not found", and the token
        itself appears nowhere in the message.
        """
        fake = FakeConsul(tokens={"s3cret": "write"})
        storage = ConsulStorage(StubTreq(fake), self.clock, token="wrong-token")
        for d in (storage.set("k", b"v"), storage.list("")):
            e = self.failureResultOf(d, ConsulError).value
            self.assertEqual(e.status, 403)
            self.assertIn("ACL not found", str(e))
            self.assertIn("unknown to Consul", str(e))
            self.assertNotIn("wrong-token", str(e))

    def test_token_read_only(self) -> None:
        """
        A read-only token reads but cannot write.
        """
        fake = FakeConsul(tokens={"reader": "read"})
        fake.put("acme/k", b"v")
        storage = ConsulStorage(StubTreq(fake), self.clock, token="reader")
        self.assertEqual(_result(storage.get("k")), b"v")
        e = self.failureResultOf(storage.set("k", b"w"), ConsulError).value
        self.assertIn("lacks permission 'key:write'", str(e))

    def test_expired_cleanup_failure_only_logged(self) -> None:
        """
        When the delete of an expired value fails (here: a read-only token),
        get still answers None and the failure is a warning, not an error.
        """
        fake = FakeConsul(tokens={"reader": "read"})
        fake.put("acme/k", b"v", flags=int(NOW * 1000))
        storage = ConsulStorage(StubTreq(fake), self.clock, token="reader")
        logged: list[dict] = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        self.assertIsNone(_result(storage.get("k")))
        self.assertIn("acme/k", fake.entries)
        [event] = [e for e in logged if e.get("key") == "k"]
        self.assertEqual(event["log_level"], LogLevel.warn)
        self.assertIn("lacks permission 'key:write'", event["error"])

    def test_server_error_unavailable(self) -> None:
        """
        A 5xx answer (Consul without a leader) is ConsulUnavailable with
        Consul's message; it recovers when Consul does.
        """
        self.fake.down = True
        e = self.failureResultOf(self.storage.set("k", b"v"), ConsulUnavailable).value
        self.assertEqual(e.status, 500)
        self.assertIn("No cluster leader", str(e))
        self.fake.down = False
        _result(self.storage.set("k", b"v"))
        self.assertEqual(_result(self.storage.get("k")), b"v")

    def test_value_too_large(self) -> None:
        """
        A value over Consul's 512 KiB: ConsulError 413, not "unavailable".
        """
        e = self.failureResultOf(self.storage.set("k", b"x" * (MAX_VALUE_SIZE + 1)), ConsulError).value
        self.assertNotIsInstance(e, ConsulUnavailable)
        self.assertEqual(e.status, 413)
        self.assertIn("too large", str(e))

    def test_not_consul(self) -> None:
        """
        A 200 answer that is not Consul's JSON (a proxy's page) is a
        ConsulError, not a crash.
        """
        storage = ConsulStorage(StubTreq(_HTMLPage()), self.clock)
        for d in (storage.get("k"), storage.list("")):
            self.assertIn("not Consul's KV format", str(self.failureResultOf(d, ConsulError).value))
        e = self.failureResultOf(storage.set("k", b"v"), ConsulError).value
        self.assertIn("expected true or false, got b'<html>", str(e))

    def test_bad_timeout(self) -> None:
        """
        A timeout that is not positive is refused.
        """
        self.assertRaises(ValueError, ConsulStorage, StubTreq(self.fake), self.clock, timeout=0)

    def test_locker(self) -> None:
        """
        StorageLocker on Consul: the lock is Kong's update_lock key holding
        the owner token with an expiry in flags, so a Kong node's add fails.
        """
        lease = _result(StorageLocker(self.storage).acquire(keys.update_lock("l.example"), 30))
        entry = self.fake.entries["acme/kong_acme:update_lock:l.example"]
        self.assertEqual(entry.value, lease.token.encode())
        self.assertEqual(entry.flags, (NOW + 30) * 1000)
        self.assertTrue(_result(lease.release()))
        self.assertEqual(self.fake.entries, {})


class _MeddlingConsul(FakeConsul):
    """A FakeConsul where another writer stores ``meddle`` right after the next read."""

    meddle: bytes | None = None

    def _get(self, request: Any, key: str, args: Any, token: Any) -> bytes:
        try:
            return super()._get(request, key, args, token)
        finally:
            if self.meddle is not None:
                self.put(key, self.meddle)
                self.meddle = None


class _HTMLPage(FakeConsul):
    def render(self, request: Any) -> bytes:
        return b"<html>hello</html>"


class ConsulOutageTests(TestCase):
    """
    Tests for ConsulStorage when Consul is down, over real HTTP: each
    failure is a ConsulUnavailable within the timeout, and the same store
    works again once Consul is back.
    """

    def setUp(self) -> None:
        self.served = _Served(self, FakeConsul())
        self.storage = self.served.storage(Clock(), timeout=0.3)

    @inlineCallbacks
    def test_connection_refused(self) -> Any:
        """
        Nothing listening: ConsulUnavailable "connection refused", well
        before the timeout (Twisted's HostnameEndpoint takes 0.3 s to give
        up); served again on the same port, the store recovers.
        """
        storage = self.served.storage(Clock(), timeout=5.0)
        yield storage.set("k", b"v")
        yield self.served.pool.closeCachedConnections()
        yield self.served.port.stopListening()
        started = time.monotonic()
        e = yield self.assertFailure(storage.get("k"), ConsulUnavailable)
        self.assertIn("connection refused", str(e))
        self.assertLess(time.monotonic() - started, 2.0)
        self.assertIsNone(e.status)
        self.served.port = start_fake_consul(reactor, port=self.served.number, fake=self.served.fake)
        self.assertEqual((yield storage.get("k")), b"v")

    @inlineCallbacks
    def test_timeout(self) -> Any:
        """
        Consul accepts but does not answer: ConsulUnavailable after the
        timeout (300 ms), not later; once it answers again, so does the
        store.
        """
        self.served.fake.hold = True
        started = time.monotonic()
        e = yield self.assertFailure(self.storage.set("k", b"v"), ConsulUnavailable)
        elapsed = time.monotonic() - started
        self.assertGreaterEqual(elapsed, 0.29)
        self.assertLess(elapsed, 2.0)
        self.assertIn("no complete answer within 300 ms", str(e))
        self.served.fake.release()
        yield self.storage.set("k", b"v")
        self.assertEqual((yield self.storage.get("k")), b"v")

    @inlineCallbacks
    def test_no_leader(self) -> Any:
        """
        Consul answering 500 "No cluster leader": ConsulUnavailable with that
        message; recovery when it has a leader again.
        """
        self.served.fake.down = True
        e = yield self.assertFailure(self.storage.add("k", b"v"), ConsulUnavailable)
        self.assertIn("No cluster leader", str(e))
        self.served.fake.down = False
        self.assertTrue((yield self.storage.add("k", b"v")))


class KongInteropTests(TestCase):
    """
    Tests that a Kong node and kongacme share one Consul: requests made
    exactly as lua-resty-acme makes them (same URLs, flags, base64 decoding,
    expiry rule and listing), over real HTTP.
    """

    def setUp(self) -> None:
        self.served = _Served(self, FakeConsul(tokens={"t": "write"}))
        self.clock = Clock()
        self.clock.advance(NOW)
        self.storage = self.served.storage(self.clock, token="t")

    def kong(self, method: str, path: str, body: bytes | None = None) -> Deferred:
        """A request as lua-resty-acme sends it: base_url .. key, token header."""
        return self.served.http.request(
            method, self.served.url + "/v1/kv/acme/" + path, data=body, headers={"X-Consul-Token": ["t"]}
        )

    @inlineCallbacks
    def test_kong_writes_kongacme_reads(self) -> Any:
        """
        Kong's set with a TTL (PUT ?flags=<(now + ttl) * 1000>) and without
        one, with a "/" key turned into "-": kongacme reads both and lists
        them; the TTL one expires when Kong says it does.
        """
        host = "kong.example"
        cert = json.dumps({"key": "KEY", "cert": "CERT"}).encode()
        account = keys.account_key("https://ca.example/dir", "a@b.example")
        ttl_ms = int((NOW + 60) * 1000)
        for path, body in [
            (keys.cert_key(host), cert),
            (keys.slash_to_dash(account), b'{"key":"PEM"}'),
            (keys.fail_backoff(host) + "?flags=%d" % ttl_ms, b"%d" % (NOW + 60)),
        ]:
            response = yield self.kong("PUT", path, body)
            self.assertEqual((yield response.text()), "true")
        self.assertEqual((yield self.storage.get(keys.cert_key(host))), cert)
        self.assertEqual((yield self.storage.get(account)), b'{"key":"PEM"}')
        self.assertEqual((yield self.storage.get(keys.fail_backoff(host))), b"%d" % (NOW + 60))
        listed = yield self.storage.list(keys.PREFIX)
        expected = [keys.cert_key(host), keys.slash_to_dash(account), keys.fail_backoff(host)]
        self.assertEqual(sorted(listed), sorted(expected))
        self.clock.advance(60)
        self.assertIsNone((yield self.storage.get(keys.fail_backoff(host))))

    @inlineCallbacks
    def test_kongacme_writes_kong_reads(self) -> Any:
        """
        What kongacme writes, Kong's get decodes (res[1].Value base64) and
        judges alive by its rule (Flags > 0 and Flags < now * 1000 means
        expired); Kong's list (GET ?keys, last path segment, prefix match)
        finds it.
        """
        yield self.storage.set(keys.update_lock("k.example"), b"placeholder", ttl=30)
        yield self.storage.set(keys.cert_key("k.example"), b'{"key":"K","cert":"C"}')
        response = yield self.kong("GET", keys.update_lock("k.example"))
        [entry] = yield response.json()
        self.assertEqual(base64.b64decode(entry["Value"]), b"placeholder")
        self.assertEqual(entry["Flags"], math.floor((NOW + 30) * 1000))
        kong_now_ms = (NOW + 29.999) * 1000
        self.assertFalse(entry["Flags"] > 0 and entry["Flags"] < kong_now_ms)
        response = yield self.kong("GET", keys.cert_key("k.example"))
        [entry] = yield response.json()
        self.assertEqual((entry["Flags"], base64.b64decode(entry["Value"])), (0, b'{"key":"K","cert":"C"}'))
        response = yield self.kong("GET", "?keys")
        names = [name.rsplit("/", 1)[-1] for name in (yield response.json())]
        self.assertEqual([n for n in names if n.startswith(keys.CERT_KEY_PREFIX)], [keys.cert_key("k.example")])

    @inlineCallbacks
    def test_kong_lock_excludes_kongacme(self) -> Any:
        """
        A lock Kong holds (add = GET then PUT ?cas=0&flags=) makes
        kongacme's add fail, and the other way round.
        """
        lock = keys.update_lock("both.example")
        response = yield self.kong("PUT", lock + "?flags=%d&cas=0" % ((NOW + 30) * 1000), b"placeholder")
        self.assertEqual((yield response.text()), "true")
        self.assertFalse((yield self.storage.add(lock, b"mine", 30)))
        other = keys.update_lock("other.example")
        self.assertTrue((yield self.storage.add(other, b"mine", 30)))
        response = yield self.kong("PUT", other + "?flags=%d&cas=0" % ((NOW + 30) * 1000), b"placeholder")
        self.assertEqual((yield response.text()), "false")


class StorageFromConfigConsulTests(TestCase):
    """
    Tests for storage_from_config with storage: consul.
    """

    @inlineCallbacks
    def test_from_config(self) -> Any:
        """
        storage: consul builds a ConsulStorage from storage_config.consul
        (host, port, kv_path, token, timeout) that talks to that Consul.
        """
        fake = FakeConsul(tokens={"tok": "write"})
        port = start_fake_consul(reactor, fake=fake)
        consul = ConsulStorageConfig(port=port.getHost().port, kv_path="edge/acme", token="tok", timeout=5000.0)
        config = AcmeConfig(
            account_email="ops@example.com", storage="consul", storage_config=StorageConfig(consul=consul)
        )
        storage = storage_from_config(config, self.mktemp(), reactor)

        @inlineCallbacks
        def stop() -> Any:
            yield storage.close()
            yield port.stopListening()
            yield settle()

        self.addCleanup(stop)
        self.assertIsInstance(storage, ConsulStorage)
        yield storage.set("k", b"v", ttl=60)
        self.assertEqual(list(fake.entries), ["edge/acme/k"])
        self.assertLess(abs(fake.entries["edge/acme/k"].flags / 1000 - (time.time() + 60)), 5)
        self.assertEqual((yield storage.get("k")), b"v")


    @inlineCallbacks
    def test_https(self) -> Any:
        """
        https: true speaks TLS: against a plain-HTTP Consul the request
        fails as ConsulUnavailable (here: no TLS answer within the
        timeout), to an https:// URL.
        """
        port = start_fake_consul(reactor)
        consul = ConsulStorageConfig(https=True, port=port.getHost().port, timeout=500.0)
        storage = storage_from_config(
            AcmeConfig(account_email="ops@example.com", storage="consul", storage_config=StorageConfig(consul=consul)),
            self.mktemp(),
            reactor,
        )

        @inlineCallbacks
        def stop() -> Any:
            yield storage.close()
            yield port.stopListening()
            yield settle()

        self.addCleanup(stop)
        e = yield self.assertFailure(storage.get("k"), ConsulUnavailable)
        self.assertTrue(e.url.startswith("https://127.0.0.1:%d/v1/kv/acme/k" % (port.getHost().port,)), e.url)


class FakeConsulTests(SynchronousTestCase):
    """
    Tests for FakeConsul: Consul's KV API as documented, driven with plain
    treq requests through StubTreq.
    """

    def setUp(self) -> None:
        self.fake = FakeConsul()
        self.http = StubTreq(self.fake)

    def call(self, method: str, path: str, body: bytes | None = None, **headers: str) -> tuple[int, Any, bytes]:
        response = _result(
            self.http.request(
                method,
                "http://consul/v1/kv/" + path,
                data=body,
                headers={k.replace("_", "-"): [v] for k, v in headers.items()},
            )
        )
        return response.code, response.headers, _result(treq.content(response))

    def json(self, method: str, path: str, body: bytes | None = None, **headers: str) -> Any:
        code, _, data = self.call(method, path, body, **headers)
        self.assertEqual(code, 200, data)
        return json.loads(data)

    def test_get(self) -> None:
        """
        GET answers a one-entry array: base64 Value, Flags, indexes; Session
        is left out when no session holds the key (Consul's omitempty).
        """
        self.assertIs(self.json("PUT", "a/b?flags=42", b"hello"), True)
        [entry] = self.json("GET", "a/b")
        self.assertEqual(
            entry,
            {"LockIndex": 0, "Key": "a/b", "Flags": 42, "Value": "aGVsbG8=", "CreateIndex": 2, "ModifyIndex": 2},
        )

    def test_get_missing(self) -> None:
        """
        A missing key is a 404 with an empty body and X-Consul-Index.
        """
        code, headers, body = self.call("GET", "nope")
        self.assertEqual((code, body), (404, b""))
        self.assertEqual(headers.getRawHeaders(b"x-consul-index"), [b"1"])

    def test_raw_and_empty(self) -> None:
        """
        ?raw answers the value itself; an empty value is "Value": null.
        """
        self.json("PUT", "bin", b"\x00\xff")
        code, headers, body = self.call("GET", "bin?raw")
        self.assertEqual((code, body), (200, b"\x00\xff"))
        self.assertEqual(headers.getRawHeaders(b"content-type"), [b"text/plain"])
        self.json("PUT", "empty", b"")
        self.assertIsNone(self.json("GET", "empty")[0]["Value"])

    def test_index_increases(self) -> None:
        """
        Every change takes a new index: CreateIndex stays, ModifyIndex and
        X-Consul-Index grow; a failed CAS changes nothing.
        """
        self.json("PUT", "k", b"1")
        self.json("PUT", "k", b"2")
        self.assertIs(self.json("PUT", "k?cas=0", b"3"), False)
        code, headers, body = self.call("GET", "k")
        [entry] = json.loads(body)
        self.assertEqual((entry["CreateIndex"], entry["ModifyIndex"]), (2, 3))
        self.assertEqual(headers.getRawHeaders(b"x-consul-index"), [b"3"])

    def test_cas_put(self) -> None:
        """
        ?cas=0 creates only; ?cas=<index> writes only over that ModifyIndex,
        and never creates.
        """
        self.assertIs(self.json("PUT", "k?cas=0", b"1"), True)
        self.assertIs(self.json("PUT", "k?cas=0", b"2"), False)
        index = self.json("GET", "k")[0]["ModifyIndex"]
        self.assertIs(self.json("PUT", f"k?cas={index + 1}", b"3"), False)
        self.assertIs(self.json("PUT", f"k?cas={index}", b"4"), True)
        self.assertIs(self.json("PUT", f"k?cas={index}", b"5"), False)
        self.assertIs(self.json("PUT", "other?cas=7", b"6"), False)
        self.assertEqual(base64.b64decode(self.json("GET", "k")[0]["Value"]), b"4")

    def test_flags_reset(self) -> None:
        """
        A PUT without ?flags sets them to 0.
        """
        self.json("PUT", "k?flags=9", b"1")
        self.json("PUT", "k", b"2")
        self.assertEqual(self.json("GET", "k")[0]["Flags"], 0)

    def test_bad_numbers(self) -> None:
        """
        A flags or cas that is not an unsigned 64-bit integer gets Consul's
        ParseUint error (a 500: Consul does not wrap it).
        """
        for path in ("k?flags=-1", "k?cas=x", "k?flags=18446744073709551616"):
            code, _, body = self.call("PUT", path, b"v")
            self.assertEqual(code, 500)
            self.assertIn(b"strconv.ParseUint", body)
        self.assertEqual(self.fake.entries, {})

    def test_delete(self) -> None:
        """
        DELETE answers true, also for a missing key; with ?cas only over
        that ModifyIndex (a missing key: true, as in Consul).
        """
        self.json("PUT", "k", b"1")
        index = self.json("GET", "k")[0]["ModifyIndex"]
        self.assertIs(self.json("DELETE", f"k?cas={index + 1}"), False)
        self.assertIn("k", self.fake.entries)
        self.assertIs(self.json("DELETE", f"k?cas={index}"), True)
        self.assertEqual(self.fake.entries, {})
        self.assertIs(self.json("DELETE", "k?cas=5"), True)
        self.assertIs(self.json("DELETE", "k"), True)

    def test_delete_recurse(self) -> None:
        """
        DELETE ?recurse removes a whole prefix; with ?cas it is refused.
        """
        for key in ("p/a", "p/b/c", "q"):
            self.json("PUT", key, b"v")
        code, _, body = self.call("DELETE", "p/?recurse&cas=1")
        self.assertEqual(code, 400)
        self.assertIn(b"Conflicting flags", body)
        self.assertIs(self.json("DELETE", "p/?recurse"), True)
        self.assertEqual(list(self.fake.entries), ["q"])

    def test_keys(self) -> None:
        """
        ?keys lists key names under a prefix, sorted; separator folds
        deeper levels; nothing under a prefix is a 404, at the root [].
        """
        self.assertEqual(self.json("GET", "?keys"), [])
        for key in ("acme/b", "acme/a", "acme/sub/x", "acme/sub/y", "other"):
            self.json("PUT", key, b"v")
        self.assertEqual(self.json("GET", "acme/?keys"), ["acme/a", "acme/b", "acme/sub/x", "acme/sub/y"])
        self.assertEqual(self.json("GET", "acme/?keys&separator=/"), ["acme/a", "acme/b", "acme/sub/"])
        self.assertEqual(self.json("GET", "acme/?keys&seperator=/"), ["acme/a", "acme/b", "acme/sub/"])
        self.assertEqual(self.call("GET", "nothing/?keys")[0], 404)

    def test_recurse(self) -> None:
        """
        ?recurse answers every entry under a prefix; none is a 404.
        """
        self.json("PUT", "acme/a", b"1")
        self.json("PUT", "acme/b", b"2")
        self.json("PUT", "acmeX", b"3")
        entries = self.json("GET", "acme/?recurse")
        self.assertEqual([(e["Key"], e["Value"]) for e in entries], [("acme/a", "MQ=="), ("acme/b", "Mg==")])
        self.assertEqual(self.call("GET", "none/?recurse")[0], 404)

    def test_missing_key_name(self) -> None:
        """
        GET, PUT and DELETE without a key (and without recurse/keys) are a
        400 "Missing key name".
        """
        for method in ("GET", "PUT", "DELETE"):
            code, _, body = self.call(method, "")
            self.assertEqual((code, body), (400, b"Missing key name"))

    def test_too_large(self) -> None:
        """
        A value over 512 KiB is a 413; exactly 512 KiB is stored.
        """
        self.assertIs(self.json("PUT", "k", b"x" * MAX_VALUE_SIZE), True)
        code, _, body = self.call("PUT", "k2", b"x" * (MAX_VALUE_SIZE + 1))
        self.assertEqual(code, 413)
        self.assertIn(b"too large, max size: 524288 bytes", body)

    def test_key_validation(self) -> None:
        """
        Keys with leading or trailing spaces or "../" are refused (current
        Consul); the same keys pass with validation off.
        """
        for path in ("%20k", "k%20", "a/../b", "a/..%2fb"):
            self.assertEqual(self.call("PUT", path, b"v")[0], 400, path)
        self.assertIs(self.json("PUT", "ok:with%23odd%25chars%20inside", b"v"), True)
        self.assertIn("ok:with#odd%chars inside", self.fake.entries)
        lax = FakeConsul(validate_keys=False)
        self.http = StubTreq(lax)
        self.assertIs(self.json("PUT", "%20k", b"v"), True)

    def test_acl(self) -> None:
        """
        With ACLs: the token from X-Consul-Token, ?token= or a Bearer
        header; unknown → 403 "ACL not found"; missing or read-only → 403
        "Permission denied"; lists filter and say so in a header.
        """
        self.fake = FakeConsul(tokens={"w": "write", "r": "read"})
        self.http = StubTreq(self.fake)
        self.assertIs(self.json("PUT", "k", b"v", X_Consul_Token="w"), True)
        self.assertIs(self.json("PUT", "k?token=w", b"v"), True)
        self.assertIs(self.json("PUT", "k", b"v", Authorization="Bearer w"), True)
        self.assertEqual(self.call("GET", "k", X_Consul_Token="nope")[:3:2], (403, b"ACL not found"))
        code, _, body = self.call("GET", "k")
        self.assertEqual(code, 403)
        self.assertIn(b"Permission denied: token with AccessorID '00000000-0000-0000-0000-000000000002'", body)
        self.assertEqual(len(self.json("GET", "k", X_Consul_Token="r")), 1)
        code, _, body = self.call("PUT", "k", b"v", X_Consul_Token="r")
        self.assertEqual(code, 403)
        self.assertIn(b"lacks permission 'key:write'", body)
        code, headers, _ = self.call("GET", "?recurse")
        self.assertEqual(code, 404)
        self.assertEqual(headers.getRawHeaders(b"x-consul-results-filtered-by-acls"), [b"true"])

    def test_down(self) -> None:
        """
        down answers 500 "No cluster leader" to everything.
        """
        self.fake.down = True
        self.assertEqual(self.call("GET", "k")[::2], (500, b"No cluster leader"))

    def test_hold(self) -> None:
        """
        hold keeps requests unanswered until release answers them.
        """
        self.fake.hold = True
        d = self.http.request("PUT", "http://consul/v1/kv/k", data=b"v")
        self.assertNoResult(d)
        self.fake.release()
        self.http.flush()
        self.assertEqual(_result(d).code, 200)
        self.assertIn("k", self.fake.entries)

    def test_method_not_allowed(self) -> None:
        """
        Methods other than GET, PUT and DELETE are a 405.
        """
        self.assertEqual(self.call("POST", "k", b"v")[0], 405)
