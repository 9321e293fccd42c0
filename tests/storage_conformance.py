"""
The behaviour every :class:`kongacme.interfaces.IStorage` provider must
have, as one mixin run against each of them (memory, files, and later Redis,
OpenBao and the Consul fake).

Use it as::

    class RedisConformanceTests(StorageConformanceMixin, TestCase):
        supports_injected_clock = False
        short_ttl = 1.0

        def make_storage(self):
            ...

Every test yields every ``Deferred``, so providers whose methods really are
asynchronous pass or fail on their merits.
"""

from __future__ import annotations

import os
from typing import Any, Generator, Optional

from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks, maybeDeferred, succeed
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import SkipTest
from zope.interface.verify import verifyObject

from kongacme.interfaces import IStorage
from kongacme.storage import keys

Steps = Generator[Deferred[Any], Any, None]

#: Keys with characters a provider might mangle: separators, glob and
#: regex metacharacters, spaces, percent signs, non-ASCII. All distinct
#: even after Kong's Consul/Vault "/" to "-" replacement.
SPECIAL_KEYS = (
    "kong_acme:cert_key:*.example.com",
    "with/slash/and:colon",
    "tok3n_-x#http-01",
    "glob*?[a-z]{b}",
    "space and\ttab",
    "percent%2Fsign",
    "back\\slash",
    "dots/../..",
    "ünïcödé.例え.jp",
    "UPPER:lower",
    "upper:lower",
    ".hidden",
)


class StorageConformanceMixin:
    """
    Tests for an IStorage provider. Mix into
    :class:`twisted.trial.unittest.TestCase` and define
    :meth:`make_storage`.

    :cvar supports_injected_clock: ``True`` when the clock from
        :meth:`make_storage` decides expiry; ``False`` (a real server) makes
        the expiry tests wait in real time and skips the exact-boundary test.
    :cvar short_ttl: the TTL the expiry tests use; keep it about a second
        for real-time providers.
    :cvar expiry_slack: extra seconds a real-time provider may take to let
        an expired key go.
    :cvar max_value_size: largest value round-tripped (Consul allows 512
        KiB).
    """

    supports_injected_clock = True
    short_ttl = 10.0
    expiry_slack = 0.0
    max_value_size = 1024 * 1024

    storage: Any
    clock: Optional[Clock]

    def make_storage(self) -> Any:
        """
        An empty store for one test, and the clock that drives its expiry
        (``None`` when :attr:`supports_injected_clock` is false). May
        return a ``Deferred`` firing with the pair. Register any cleanup
        with ``addCleanup``.

        :return: ``(storage, clock)``.
        """
        raise NotImplementedError(f"{type(self).__name__} must define make_storage()")

    def listed_form(self, key: str) -> str:
        """
        How :meth:`IStorage.list` spells ``key``: itself, except for
        providers that store keys in a lossy form (Kong's Consul and Vault
        adapters replace "/" by "-").
        """
        return key

    def setUp(self) -> Deferred[None]:
        d = maybeDeferred(self.make_storage)

        def got(pair: tuple[Any, Optional[Clock]]) -> None:
            self.storage, self.clock = pair

        return d.addCallback(got)

    def elapse(self, seconds: float) -> Deferred[None]:
        """Let ``seconds`` pass on the store's clock (really, if need be)."""
        if self.supports_injected_clock:
            assert self.clock is not None
            self.clock.advance(seconds)
            return succeed(None)
        from twisted.internet import reactor

        return deferLater(reactor, seconds, lambda: None)

    @inlineCallbacks
    def assertListed(self, prefix: str, expected: list[str]) -> Steps:
        """Assert that ``list(prefix)`` fires with ``expected`` (any order, no duplicates)."""
        listed = yield self.storage.list(prefix)
        self.assertIsInstance(listed, list)
        self.assertEqual(len(listed), len(set(listed)), f"duplicates in {listed!r}")
        self.assertEqual(sorted(listed), sorted(self.listed_form(k) for k in expected))

    # -- basics -------------------------------------------------------------

    def test_provides_interface(self) -> None:
        """
        The provider provides IStorage (verifyObject accepts it).
        """
        self.assertTrue(verifyObject(IStorage, self.storage))

    @inlineCallbacks
    def test_get_missing(self) -> Steps:
        """
        get of a key never stored fires with None.
        """
        self.assertIsNone((yield self.storage.get("kong_acme:cert_key:nowhere.example")))

    @inlineCallbacks
    def test_round_trip(self) -> Steps:
        """
        set then get returns exactly the bytes stored: empty, every byte
        value, and a large random value; set fires with None.
        """
        values = {
            "empty": b"",
            "binary": bytes(range(256)) * 3 + b"\r\n\x00",
            "large": os.urandom(self.max_value_size),
        }
        for key, value in values.items():
            self.assertIsNone((yield self.storage.set(key, value)))
        for key, value in values.items():
            got = yield self.storage.get(key)
            self.assertIsInstance(got, bytes)
            self.assertEqual(got, value)

    @inlineCallbacks
    def test_set_replaces(self) -> Steps:
        """
        A second set replaces the value.
        """
        yield self.storage.set("k", b"one")
        yield self.storage.set("k", b"two")
        self.assertEqual((yield self.storage.get("k")), b"two")
        yield self.assertListed("k", ["k"])

    @inlineCallbacks
    def test_delete(self) -> Steps:
        """
        delete removes a key (get None, not listed) and fires with None;
        deleting a missing key is no error.
        """
        yield self.storage.set("k", b"v")
        self.assertIsNone((yield self.storage.delete("k")))
        self.assertIsNone((yield self.storage.get("k")))
        yield self.assertListed("", [])
        self.assertIsNone((yield self.storage.delete("k")))
        self.assertIsNone((yield self.storage.delete("never-there")))

    # -- add ----------------------------------------------------------------

    @inlineCallbacks
    def test_add_absent(self) -> Steps:
        """
        add of an absent key stores it and fires with True.
        """
        self.assertIs((yield self.storage.add("lock", b"mine")), True)
        self.assertEqual((yield self.storage.get("lock")), b"mine")

    @inlineCallbacks
    def test_add_present(self) -> Steps:
        """
        add of a present key fires with False and leaves the value alone.
        """
        yield self.storage.set("lock", b"theirs")
        self.assertIs((yield self.storage.add("lock", b"mine")), False)
        self.assertEqual((yield self.storage.get("lock")), b"theirs")

    @inlineCallbacks
    def test_add_after_delete(self) -> Steps:
        """
        add succeeds again once the key is deleted.
        """
        self.assertIs((yield self.storage.add("lock", b"1")), True)
        yield self.storage.delete("lock")
        self.assertIs((yield self.storage.add("lock", b"2")), True)
        self.assertEqual((yield self.storage.get("lock")), b"2")

    @inlineCallbacks
    def test_add_expired(self) -> Steps:
        """
        add of an expired key stores the new value, with the new TTL (none
        here), not the old one.
        """
        yield self.storage.set("lock", b"old", ttl=self.short_ttl)
        yield self.elapse(self.short_ttl + self.expiry_slack)
        self.assertIs((yield self.storage.add("lock", b"new")), True)
        yield self.elapse(self.short_ttl + self.expiry_slack)
        self.assertEqual((yield self.storage.get("lock")), b"new")

    @inlineCallbacks
    def test_add_race(self) -> Steps:
        """
        Of many adds of one key started together, exactly one wins, and the
        stored value is the winner's.
        """
        results = yield gatherResults([self.storage.add("race", b"%d" % i) for i in range(10)])
        self.assertEqual(results.count(True), 1, results)
        self.assertEqual(results.count(False), 9, results)
        self.assertEqual((yield self.storage.get("race")), b"%d" % results.index(True))

    # -- TTL ----------------------------------------------------------------

    @inlineCallbacks
    def test_ttl_expiry(self) -> Steps:
        """
        A key set with a TTL is there (and listed) before it runs out, and
        gone (get None, not listed) after.
        """
        yield self.storage.set("short", b"v", ttl=self.short_ttl)
        yield self.storage.add("short-add", b"v", ttl=self.short_ttl)
        yield self.storage.set("forever", b"v")
        yield self.elapse(self.short_ttl / 2)
        self.assertEqual((yield self.storage.get("short")), b"v")
        yield self.assertListed("", ["short", "short-add", "forever"])
        yield self.elapse(self.short_ttl / 2 + self.expiry_slack)
        self.assertIsNone((yield self.storage.get("short")))
        self.assertIsNone((yield self.storage.get("short-add")))
        self.assertEqual((yield self.storage.get("forever")), b"v")
        yield self.assertListed("", ["forever"])

    @inlineCallbacks
    def test_ttl_boundary(self) -> Steps:
        """
        With an injected clock a key lives until exactly ``ttl`` seconds
        after it was written: present just before, gone at that instant.
        """
        if not self.supports_injected_clock:
            raise SkipTest("expiry follows real time for this provider")
        yield self.storage.set("k", b"v", ttl=10)
        yield self.elapse(9.5)
        self.assertEqual((yield self.storage.get("k")), b"v")
        yield self.elapse(0.5)
        self.assertIsNone((yield self.storage.get("k")))

    @inlineCallbacks
    def test_set_replaces_ttl(self) -> Steps:
        """
        set replaces the TTL too: without one the key no longer expires,
        with a longer one it lives longer.
        """
        yield self.storage.set("a", b"1", ttl=self.short_ttl)
        yield self.storage.set("a", b"2")
        yield self.storage.set("b", b"1", ttl=self.short_ttl)
        yield self.storage.set("b", b"2", ttl=self.short_ttl * 3)
        yield self.elapse(self.short_ttl + self.expiry_slack)
        self.assertEqual((yield self.storage.get("a")), b"2")
        self.assertEqual((yield self.storage.get("b")), b"2")

    # -- list ---------------------------------------------------------------

    @inlineCallbacks
    def test_list_prefix(self) -> Steps:
        """
        list returns exactly the keys starting with the prefix (a key equal
        to the prefix included); "" lists everything; no match is [].
        """
        inside = ["kong_acme:cert_key:a.example", "kong_acme:cert_key:b.example", "kong_acme:cert_key:"]
        outside = ["kong_acme:cert_key", "kong_acme:cert_keyx", "x:kong_acme:cert_key:c", "KONG_ACME:cert_key:d"]
        for key in inside + outside:
            yield self.storage.set(key, b"v")
        yield self.assertListed("kong_acme:cert_key:", inside)
        yield self.assertListed("", inside + outside)
        yield self.assertListed("nothing-here", [])

    @inlineCallbacks
    def test_list_literal_prefix(self) -> Steps:
        """
        Glob and escape characters in a prefix are literal: "p*" lists only
        keys starting with "p*", not every key starting with "p".
        """
        stored = ["p*1", "pa1", "p?2", "pb2", "p[a]3", "pa3", "p\\4", "p\\\\4", "p.5", "px5", "p%6"]
        for key in stored:
            yield self.storage.set(key, b"v")
        yield self.assertListed("p*", ["p*1"])
        yield self.assertListed("p?", ["p?2"])
        yield self.assertListed("p[a]", ["p[a]3"])
        yield self.assertListed("p[", ["p[a]3"])
        yield self.assertListed("p\\", ["p\\4", "p\\\\4"])
        yield self.assertListed("p.", ["p.5"])
        yield self.assertListed("p%", ["p%6"])
        yield self.assertListed("p", stored)

    @inlineCallbacks
    def test_special_keys(self) -> Steps:
        """
        Keys with separators, glob characters, spaces and non-ASCII are
        stored, listed and deleted each on its own.
        """
        for i, key in enumerate(SPECIAL_KEYS):
            yield self.storage.set(key, b"%d" % i)
        for i, key in enumerate(SPECIAL_KEYS):
            self.assertEqual((yield self.storage.get(key)), b"%d" % i, key)
        yield self.assertListed("", list(SPECIAL_KEYS))
        yield self.assertListed("ünïcödé.", ["ünïcödé.例え.jp"])
        yield self.storage.delete(SPECIAL_KEYS[0])
        yield self.assertListed("", list(SPECIAL_KEYS[1:]))

    @inlineCallbacks
    def test_long_key(self) -> Steps:
        """
        A key as long as Kong's can get (a 253-character host, a long
        directory URL) round-trips and lists.
        """
        host = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])
        long_keys = [keys.cert_key(host), keys.account_key("https://ca.example/" + "x" * 300, "a@b.example")]
        for key in long_keys:
            yield self.storage.set(key, key.encode("utf-8"))
        for key in long_keys:
            self.assertEqual((yield self.storage.get(key)), key.encode("utf-8"))
        yield self.assertListed("kong_acme:", long_keys)
        yield self.assertListed(keys.CERT_KEY_PREFIX + "a", long_keys[:1])

    @inlineCallbacks
    def test_kong_keys(self) -> Steps:
        """
        Kong's real key shapes live side by side and list by their prefixes.
        """
        account = keys.account_key("https://acme-v02.api.letsencrypt.org/directory", "ops+acme@example.com")
        certs = [keys.cert_key("example.com"), keys.cert_key("*.example.com")]
        renew = [keys.renew_config("example.com"), keys.renew_config("*.example.com")]
        others = [keys.RENEW_LAST_RUN, keys.fail_backoff("example.com"), keys.update_lock("example.com")]
        token = keys.http01_token("LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0")
        for key in [account, token] + certs + renew + others:
            yield self.storage.set(key, b"v")
        yield self.assertListed(keys.CERT_KEY_PREFIX, certs)
        yield self.assertListed(keys.RENEW_CONFIG_PREFIX, renew)
        yield self.assertListed(keys.ACCOUNT_PREFIX, [account])
        yield self.assertListed(keys.PREFIX, [account] + certs + renew + others)
        self.assertEqual((yield self.storage.get(token)), b"v")

    # -- misuse -------------------------------------------------------------

    @inlineCallbacks
    def test_misuse(self) -> Steps:
        """
        Wrong argument types fail with TypeError, an empty key and a TTL
        that is not positive with ValueError (raised or as a failed
        Deferred), and nothing is stored.
        """
        s = self.storage
        cases = [
            (TypeError, s.get, (b"key",)),
            (TypeError, s.set, (b"key", b"v")),
            (TypeError, s.set, ("key", "text")),
            (TypeError, s.add, ("key", None)),
            (TypeError, s.set, ("key", b"v", "10")),
            (TypeError, s.delete, (None,)),
            (TypeError, s.list, (None,)),
            (ValueError, s.get, ("",)),
            (ValueError, s.set, ("", b"v")),
            (ValueError, s.set, ("key", b"v", 0)),
            (ValueError, s.add, ("key", b"v", -1)),
            (ValueError, s.set, ("key", b"v", float("nan"))),
        ]
        for exception, method, args in cases:
            yield self.assertFailure(maybeDeferred(method, *args), exception)
        yield self.assertListed("", [])
