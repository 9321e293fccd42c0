"""
Tests for kongacme.fleet.redis_feed and kongacme.fleet.feed: fleet
propagation over Redis pub/sub, against a real ``redis-server``
(:mod:`tests.redisfixture`).
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from kongacme.config import IssuanceConfig
from kongacme.fleet.feed import IChangeFeed, change_feed_for
from kongacme.fleet.propagation import Propagator
from kongacme.fleet.redis_feed import CHANNEL, RedisChangeFeed, decode_change, encode_change
from kongacme.issuance.admission import Admission
from kongacme.issuance.manager import CertificateManager
from kongacme.storage import keys
from kongacme.testing import FakeIssuer, MemoryStorage, TestCA
from kongacme.tls.cache import CertificateCache
from kongacme.tls.fallback import generate_self_signed
from tests.redisfixture import RedisServer

#: Seconds a test waits for something that takes milliseconds before it
#: fails (a deadline, not a measurement).
DEADLINE = 15.0
#: Polls so rare that none fires during a test.
NEVER = 3600.0


async def until(predicate: Callable[[], Any], what: str) -> None:
    """Wait (really) until ``predicate()`` is true; fail after DEADLINE."""
    deadline = reactor.seconds() + DEADLINE
    while not predicate():
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await deferLater(reactor, 0.01, lambda: None)


class Node:
    """A node's cache and propagator (polls hourly) on a Redis store."""

    def __init__(self, test: TestCase, storage: Any, issuer: FakeIssuer | None = None):
        self.storage = storage
        self.cache = CertificateCache(generate_self_signed())
        self.feed = change_feed_for(storage, reactor)
        self.propagator = Propagator(
            storage, self.cache, reactor, poll_interval=NEVER, full_sync_interval=NEVER, feed=self.feed
        )
        self.polls = 0
        poll = self.propagator.poll_changes

        def counted() -> Deferred:
            self.polls += 1
            return poll()

        self.propagator.poll_changes = counted
        if issuer is not None:
            self.manager = CertificateManager(
                self.cache, storage, issuer, reactor, Admission(["*.fleet.test"]), IssuanceConfig()
            )
            self.manager.on_stored = self.propagator.announce
        self.propagator.start()
        test.addCleanup(self.propagator.stop)

    def fingerprint(self, host: str) -> str | None:
        held = self.cache.get(host)
        return None if held is None else held.fingerprint


class LogCapture:
    """The log events of one test."""

    def __init__(self, test: TestCase):
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        test.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def about(self, text: str, level: str | None = None) -> list[dict]:
        from twisted.logger import formatEvent

        return [
            e for e in self.events
            if text in formatEvent(e) and (level is None or e["log_level"].name == level)
        ]


class RedisFeedTests(TestCase):
    """
    Tests for RedisChangeFeed with Propagator: two nodes on one real Redis.
    """

    async def setUp(self) -> None:
        self.server = await RedisServer.start(self)
        self.ca = TestCA.create()

    async def store_quietly(self, storage: Any, host: str) -> Any:
        """Store a certificate for ``host`` the way Kong would: no marker."""
        certified = self.ca.issue([host])
        await storage.set(keys.cert_key(host), keys.encode_cert_key(certified))
        return certified

    async def test_issued_on_one_node_pushed_to_the_other(self) -> None:
        """
        A certificate issued on node A is in node B's cache as soon as A's
        message arrives: B polls hourly, and no poll runs after B
        subscribed (the one poll is the catch-up when it subscribed).
        """
        issuer = FakeIssuer(self.ca)
        a = Node(self, self.server.storage(), issuer)
        b = Node(self, self.server.storage())
        await until(lambda: a.feed.connected and b.feed.connected, "both nodes to subscribe")
        polls = b.polls
        certified = await a.manager.obtain("www.fleet.test")
        await until(lambda: b.fingerprint("www.fleet.test") is not None, "B to load the certificate")
        self.assertEqual(b.fingerprint("www.fleet.test"), certified.fingerprint)
        self.assertEqual(b.polls, polls)
        self.assertEqual(issuer.requests, ["www.fleet.test"])

    async def test_message_alone_suffices(self) -> None:
        """
        A published change with no marker at all (only the stored
        certificate and the message) reaches the other node.
        """
        a = Node(self, self.server.storage(namespace="ns:"))
        b = Node(self, self.server.storage(namespace="ns:"))
        await until(lambda: b.feed.connected, "B to subscribe")
        certified = await self.store_quietly(a.storage, "quiet.fleet.test")
        await a.feed.publish("quiet.fleet.test", certified.fingerprint)
        await until(lambda: b.fingerprint("quiet.fleet.test") is not None, "B to load the certificate")
        self.assertEqual(b.fingerprint("quiet.fleet.test"), certified.fingerprint)
        self.assertEqual(self.server.command("PUBSUB", "CHANNELS"), [b"ns:kongacme:changed"])

    async def test_namespaces_and_databases_are_separate(self) -> None:
        """
        Channels are namespaced like keys (and per database), so a fleet
        in another namespace gets no message.
        """
        self.assertEqual(self.server.storage(namespace="x:").channel(CHANNEL), b"x:kongacme:changed")
        self.assertEqual(self.server.storage(database=2).channel(CHANNEL), b"kongacme:changed:db2")
        a = Node(self, self.server.storage(namespace="one:"))
        b = Node(self, self.server.storage(namespace="two:"))
        await until(lambda: a.feed.connected and b.feed.connected, "both to subscribe")
        # Received by A's own subscriber only.
        self.assertEqual(await a.feed.publish("x.fleet.test", "AB:" * 19 + "AB"), 1)

    async def test_survives_a_redis_restart(self) -> None:
        """
        When Redis goes away and comes back, the subscriber reconnects by
        itself (one log line when lost, one when back) and later messages
        arrive; what was announced while it was away arrives by the
        catch-up poll on re-subscription.
        """
        logs = LogCapture(self)
        a = Node(self, self.server.storage())
        b = Node(self, self.server.storage(), None)
        await until(lambda: b.feed.connected, "B to subscribe")
        await a.feed.stop()  # one subscriber only, so the log lines are B's
        await self.server.stop()
        await until(lambda: not b.feed.connected, "B to notice")
        await deferLater(reactor, 1.5, lambda: None)  # some failed reconnection attempts
        await self.server.restart()
        # Announced (marker and message) before B is back: the marker does it.
        early = await self.store_quietly(a.storage, "early.fleet.test")
        await a.propagator.announce("early.fleet.test", early.fingerprint)
        await until(lambda: b.feed.connected, "B to subscribe again")
        await until(lambda: b.fingerprint("early.fleet.test") is not None, "the catch-up poll")
        late = await self.store_quietly(a.storage, "late.fleet.test")
        await a.feed.publish("late.fleet.test", late.fingerprint)
        await until(lambda: b.fingerprint("late.fleet.test") is not None, "B to load the certificate")
        self.assertEqual(b.fingerprint("late.fleet.test"), late.fingerprint)
        self.assertEqual(b.fingerprint("early.fleet.test"), early.fingerprint)
        self.assertEqual(len(logs.about("(subscriber)", "warn")), 1)
        self.assertEqual(len(logs.about("(subscriber): connected again", "info")), 1)

    async def test_garbage_is_logged_and_ignored(self) -> None:
        """
        Messages on the channel that are not certificate changes are
        logged (once per minute at most) and ignored; later good ones work.
        """
        logs = LogCapture(self)
        a = Node(self, self.server.storage())
        b = Node(self, self.server.storage())
        await until(lambda: b.feed.connected and a.feed.connected, "both to subscribe")
        for garbage in (b"\xff\xfe", b"[1,2]", b'{"host":"../etc","fingerprint":"AB"}', b"{}" * 1000):
            self.assertEqual(self.server.command("PUBLISH", "kongacme:changed", garbage), 2)
        certified = await self.store_quietly(a.storage, "ok.fleet.test")
        await a.feed.publish("ok.fleet.test", certified.fingerprint)
        await until(lambda: b.fingerprint("ok.fleet.test") is not None, "B to load the certificate")
        # One line per node: the other three messages within the minute are counted, not logged.
        self.assertEqual(len(logs.about("not a certificate change", "warn")), 2)

    async def test_stop_unsubscribes(self) -> None:
        """Propagator.stop closes the subscription (no subscriber left on the server)."""
        a = Node(self, self.server.storage())
        await until(lambda: a.feed.connected, "A to subscribe")
        self.assertEqual(self.server.command("PUBSUB", "NUMSUB", "kongacme:changed"), [b"kongacme:changed", 1])
        await a.propagator.stop()
        self.assertFalse(a.feed.connected)
        await until(lambda: self.server.command("PUBSUB", "NUMSUB", "kongacme:changed")[1] == 0,
                    "the subscriber to leave")

    async def test_storage_close_closes_subscriptions(self) -> None:
        """Closing the storage (daemon shutdown) closes its subscriptions too."""
        storage = self.server.storage()
        feed = change_feed_for(storage, reactor)
        feed.start(lambda host, fingerprint: None, lambda: None)
        await until(lambda: feed.connected, "the feed to subscribe")
        await storage.close()
        self.assertFalse(feed.connected)


class FeedUnitTests(SynchronousTestCase):
    """
    Tests for change_feed_for and the message format.
    """

    def test_feed_for_redis_only(self) -> None:
        """Redis storage (also wrapped) gets a RedisChangeFeed; others none."""
        from kongacme.storage.redis import RedisStorage

        redis = RedisStorage(reactor, port=1)
        feed = change_feed_for(redis, reactor)
        self.assertIsInstance(feed, RedisChangeFeed)
        self.assertTrue(verifyObject(IChangeFeed, feed))
        self.assertFalse(feed.connected)

        class Wrapper:
            wrapped = redis

        self.assertIsInstance(change_feed_for(Wrapper(), reactor), RedisChangeFeed)
        self.assertIsNone(change_feed_for(MemoryStorage(reactor), reactor))
        self.assertIsNone(change_feed_for(None, reactor))

    def test_round_trip(self) -> None:
        """decode_change reads what encode_change writes."""
        fingerprint = ":".join(["0F"] * 20)
        for host in ("example.com", "*.example.com", "a", "xn--bcher-kva.example"):
            self.assertEqual(decode_change(encode_change(host, fingerprint)), (host, fingerprint))

    def test_garbage(self) -> None:
        """Anything else is a ValueError naming what is wrong."""
        good = ":".join(["0F"] * 20)
        for data in (
            b"", b"\xff", b"null", b"[]", b'{"host":"a"}', b'{"host":1,"fingerprint":"0F"}',
            encode_change("UPPER.example", good), encode_change("a b", good), encode_change("../x", good),
            encode_change("a" * 300, good), encode_change("example.com", "nothex"),
            encode_change("example.com", "0F"),
        ):
            self.assertRaises(ValueError, decode_change, data)
