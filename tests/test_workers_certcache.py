"""
Tests for kongacme.workers.certcache: a worker's bounded certificate
cache, filled from the master on first use, over the AMP channel between
the master's end (kongacme.workers.master) and a worker's end
(kongacme.workers.worker) connected in memory.
"""

from __future__ import annotations


from cryptography.hazmat.primitives import hashes
from twisted.internet.task import Clock
from twisted.test.iosim import connectedServerAndClient
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from kongacme.config import parse_config
from kongacme.interfaces import GATE_CACHE_FILLED, ICertificateCache, IHandshakeGate
from kongacme.tls.cache import CertificateCache
from kongacme.tls.context import ServedCertificate, chain_key
from kongacme.workers import channel, master
from kongacme.workers.certcache import CertificateFetcher, WorkerCertificateCache
from kongacme.workers.master import MasterChannel, WorkerMode
from kongacme.workers.worker import Worker, WorkerChannel

from tests.test_workers_channel import CA, FakeDaemon, FakeGate, FakeProcess


class RecordingChannel(MasterChannel):
    """The master's end, counting the names each FetchCertificates asks for."""

    fetched: list

    @channel.FetchCertificates.responder
    def fetch_certificates(self, names: list) -> dict:
        self.fetched.append(list(names))
        return self._mode.fetch(names)


class WorkerCacheTests(SynchronousTestCase):
    """
    Tests for WorkerCertificateCache and CertificateFetcher with a master.
    """

    def connect(self, size=2, on_demand=False, certificates=()):
        self.clock = Clock()
        self.cache = CertificateCache(CA.issue(["fallback.invalid"]))
        for certified in certificates:
            self.cache.put(certified)
        settings = {"workers": 2, "tls": {"cache_size": size}}
        if on_demand:
            settings["acme"] = {"account_email": "a@example.test", "tos_accepted": True, "domains": ["*.test"]}
        self.daemon = FakeDaemon(parse_config(settings, "/tmp"), self.cache, manager=FakeGate())
        self.mode = WorkerMode(self.daemon, self.clock)
        self.mode.start()
        self.worker = Worker(self.clock, [], slot=1)
        self.fetched = []

        def master_end():
            end = RecordingChannel(self.mode, FakeProcess(1))
            end.fetched = self.fetched
            return end

        _, _, self.pump = connectedServerAndClient(
            lambda: WorkerChannel(self.worker, lambda: None), master_end, clock=self.clock
        )
        self.pump.flush()

    def handshake(self, *names):
        """What the TLS listener does per handshake: the gate, then the lookup."""
        waiting = [self.worker.gate.before_handshake(name) for name in names]
        self.pump.flush()
        for each in waiting:
            if each is not None:
                self.assertIs(self.successResultOf(each), GATE_CACHE_FILLED)
        return [self.worker.cache.lookup(name) for name in names]

    def changed(self):
        """The master's changes of this reactor turn are sent, and the worker's fetches answered."""
        self.clock.advance(0)
        self.pump.flush()

    def test_interfaces(self):
        """The cache and the fetcher provide their interfaces."""
        self.connect()
        verifyObject(ICertificateCache, self.worker.cache)
        verifyObject(IHandshakeGate, self.worker.gate)

    def test_fetch_on_miss(self):
        """
        A name the worker does not hold is fetched once; the handshake is
        held until the answer is in, and later handshakes go ahead without
        asking.
        """
        certified = CA.issue(["a.test"])
        self.connect(certificates=[certified])
        self.assertIsNotNone(self.worker.gate.before_handshake("a.test"))
        self.assertIsNotNone(self.worker.gate.before_handshake("a.test"))
        self.pump.flush()
        self.assertEqual(self.fetched, [["a.test"]])
        self.assertEqual(self.worker.cache.lookup("a.test").fingerprint, certified.fingerprint)
        self.assertIsNone(self.worker.gate.before_handshake("a.test"))
        self.assertEqual(self.fetched, [["a.test"]])

    def test_intermediates_parsed_once(self):
        """
        Certificates issued under one intermediate share one parsed copy of
        it in the worker (and still send it: the chain is whole).
        """
        intermediate = CA.intermediate()
        a, b = intermediate.issue(["a.test"], include_ca=True), intermediate.issue(["b.test"], include_ca=True)
        self.connect(size=3, certificates=[a, b, CA.issue(["c.test"])])
        held_a, held_b, held_c = self.handshake("a.test", "b.test", "c.test")
        self.assertEqual(held_a.fingerprint, a.fingerprint)
        self.assertEqual(
            [c.fingerprint(hashes.SHA256()) for c in held_a.chain.certificates],
            [c.fingerprint(hashes.SHA256()) for c in a.chain[1:]],
        )
        self.assertIs(held_a.chain, held_b.chain)
        self.assertEqual(held_a.chain.key, chain_key(a))
        self.assertEqual(held_c.chain.certificates, ())
        self.assertEqual(held_c.chain.key, b"")
        # Connections for both share one context, which sends the intermediate.
        self.assertIs(self.worker.builder.context_for(held_a), self.worker.builder.context_for(held_b))

    def test_bound_and_eviction(self):
        """
        With tls.cache_size 2 the worker holds two names, the least recently
        used is evicted first, and an evicted name is fetched again; the
        OpenSSL contexts built do not grow with the names.
        """
        certs = {name: CA.issue([name]) for name in ("a.test", "b.test", "c.test")}
        self.connect(size=2, certificates=certs.values())
        for round in range(3):
            for name, certified in certs.items():
                [found] = self.handshake(name)
                self.assertEqual(found.fingerprint, certified.fingerprint)
                self.worker.builder.context_for(found)
                self.assertLessEqual(len(self.worker.cache), 2)
        self.assertEqual(len(self.fetched), 9)
        self.assertEqual(self.worker.cache.evictions, 7)
        # One context for every certificate of the chain, nothing per name in the builder.
        self.assertEqual(self.worker.builder.contexts(), 1)
        self.assertEqual(len(self.worker.builder), 0)
        # b.test and c.test held; b.test used, so a.test evicts c.test.
        self.handshake("a.test", "b.test")
        self.assertEqual(len(self.fetched), 10)
        self.assertEqual(sorted(self.worker.cache.names()), ["a.test", "b.test"])
        self.cache.put(CA.issue(["d.test"]))
        self.changed()
        self.handshake("a.test")
        self.handshake("d.test")
        self.assertEqual(sorted(self.worker.cache.names()), ["a.test", "d.test"])

    def test_renewed_replaces(self):
        """
        A certificate renewed in the master replaces the worker's copy from
        the notice itself: served right after it, with no fetch, and
        without moving the name in the least recently used order.
        """
        self.connect(certificates=[CA.issue(["a.test"]), CA.issue(["b.test"])])
        self.handshake("a.test", "b.test")
        del self.fetched[:]
        renewed = CA.issue(["a.test"])
        self.cache.put(renewed)
        self.changed()
        self.assertEqual(self.fetched, [])
        self.assertEqual(self.worker.cache.lookup("b.test").fingerprint, self.cache.get("b.test").fingerprint)
        self.assertEqual(self.worker.cache.get("a.test").fingerprint, renewed.fingerprint)
        self.assertIsNone(self.worker.gate.before_handshake("a.test"))
        self.assertIsNotNone(self.worker.builder.context_for(self.worker.cache.lookup("a.test")))
        self.assertEqual(self.fetched, [])
        self.assertEqual(self.worker.cache.names(), ["b.test", "a.test"])

    def test_renewed_one_notice(self):
        """
        The notice goes over AMP as one command, however large (its
        certificates spread over several values), and needs no answer
        from the worker but the command's own.
        """
        names = ["big%d.example.test" % (i,) for i in range(2500)]
        self.connect(size=10, certificates=[CA.issue(names)])
        self.handshake("big7.example.test")
        del self.fetched[:]
        renewed = CA.issue(names)
        self.assertGreater(len(renewed.chain_pem()), 65535)
        self.cache.put(renewed)
        self.changed()
        self.assertEqual(self.fetched, [])
        self.assertEqual(self.worker.cache.get("big7.example.test").fingerprint, renewed.fingerprint)
        self.assertEqual(self.worker.cache.names(), ["big7.example.test"])

    def test_bulk_change_names_only(self):
        """
        More certificates changed in one turn than BULK_CERTIFICATES (a
        load from storage) are announced by name only: a worker holding one
        of the names drops it and fetches it again, the others are not
        fetched.
        """
        self.patch(master, "BULK_CERTIFICATES", 2)
        self.connect(size=10, certificates=[CA.issue(["a.test"])])
        self.handshake("a.test")
        del self.fetched[:]
        sent = []
        original = self.mode._broadcast
        self.patch(self.mode, "_broadcast", lambda command, **arguments: (
            sent.append(arguments), original(command, **arguments)))
        renewed = CA.issue(["a.test"])
        for certified in [renewed, CA.issue(["b.test"]), CA.issue(["c.test"])]:
            self.cache.put(certified)
        self.changed()
        self.assertEqual([arguments["certificates"] for arguments in sent], [[]])
        self.assertEqual(self.fetched, [["a.test"]])
        self.assertEqual(self.worker.cache.get("a.test").fingerprint, renewed.fingerprint)
        self.assertEqual(self.worker.cache.names(), ["a.test"])

    def test_removal_evicts(self):
        """A certificate removed in the master is dropped: the name gets the fallback."""
        self.connect(certificates=[CA.issue(["a.test"])])
        self.handshake("a.test")
        del self.fetched[:]
        self.cache.remove("a.test")
        self.changed()
        self.assertIsNone(self.worker.cache.get("a.test"))
        self.assertIs(self.worker.cache.lookup("a.test"), self.worker.cache.fallback)
        # Evicted and fetched again, as before the notices carried certificates.
        self.assertEqual(self.fetched, [["a.test"]])

    def test_removed_exact_under_wildcard(self):
        """
        An exact certificate removed under a wildcard: the notice carries
        the wildcard the master now serves for the name, and the worker
        serves it without a fetch.
        """
        wildcard = CA.issue(["*.example.test"])
        self.connect(size=10, certificates=[wildcard, CA.issue(["a.example.test"])])
        self.handshake("a.example.test")
        del self.fetched[:]
        self.cache.remove("a.example.test")
        self.changed()
        self.assertEqual(self.fetched, [])
        self.assertEqual(self.worker.cache.get("a.example.test").fingerprint, wildcard.fingerprint)

    def test_refresh_bounded_by_size(self):
        """
        A wildcard renewed after it served more names than the cache holds
        is fetched again for the names still held, in one answer no larger
        than the cache.
        """
        wildcard = CA.issue(["*.example.test"])
        self.connect(size=2, certificates=[wildcard])
        for name in ("a", "b", "c", "d"):
            self.handshake(name + ".example.test")
        self.cache.put(CA.issue(["*.example.test"]))
        del self.fetched[:]
        self.changed()
        self.assertEqual(self.fetched, [["c.example.test", "d.example.test"]])
        self.assertEqual(sorted(self.worker.cache.names()), ["c.example.test", "d.example.test"])

    def test_names_not_held_not_fetched(self):
        """A change for a name the worker does not hold costs it no fetch."""
        self.connect(certificates=[CA.issue(["a.test"])])
        self.cache.put(CA.issue(["b.test"]))
        self.changed()
        self.assertEqual(self.fetched, [])
        # Nor any place in its cache.
        self.assertEqual(self.worker.cache.names(), [])
        self.assertFalse(self.worker.cache.holds("b.test"))

    def test_wildcards(self):
        """
        The worker serves what the master's lookup picks: an exact
        certificate before a wildcard, a wildcard one label deep, else the
        fallback; an exact certificate added later replaces the wildcard
        the worker held for that name, and a wildcard removed drops every
        name it served.
        """
        wildcard = CA.issue(["*.example.test"])
        exact = CA.issue(["a.example.test"])
        self.connect(size=10, certificates=[wildcard, exact])
        a, b, deep = self.handshake("a.example.test", "b.example.test", "x.b.example.test")
        self.assertEqual(a.fingerprint, exact.fingerprint)
        self.assertEqual(b.fingerprint, wildcard.fingerprint)
        self.assertIs(deep, self.worker.cache.fallback)
        later = CA.issue(["b.example.test"])
        del self.fetched[:]
        self.cache.put(later)
        self.changed()
        self.assertEqual(self.fetched, [])
        self.assertEqual(self.worker.cache.get("b.example.test").fingerprint, later.fingerprint)
        [c] = self.handshake("c.example.test")
        self.assertEqual(c.fingerprint, wildcard.fingerprint)
        self.cache.remove("*.example.test")
        self.changed()
        self.assertIs(self.worker.cache.lookup("c.example.test"), self.worker.cache.fallback)
        self.assertEqual(self.worker.cache.get("a.example.test").fingerprint, exact.fingerprint)

    def test_wildcard_renewed(self):
        """
        A wildcard renewed: the names it covers that the notice has no
        entry of their own for are fetched again (the master's answer may
        be an exact certificate the worker cannot tell from the wildcard's)
        and then get the new wildcard, or keep their exact certificate; a
        name covered that changed in the same notice is replaced from it,
        with no fetch.
        """
        exact = CA.issue(["a.example.test"])
        self.connect(size=10, certificates=[CA.issue(["*.example.test"]), exact])
        self.handshake("a.example.test", "b.example.test", "c.example.test")
        del self.fetched[:]
        renewed = CA.issue(["*.example.test"])
        also = CA.issue(["c.example.test"])
        self.cache.put(renewed)
        self.cache.put(also)
        self.changed()
        self.assertEqual(self.fetched, [["a.example.test", "b.example.test"]])
        self.assertEqual(self.worker.cache.get("a.example.test").fingerprint, exact.fingerprint)
        self.assertEqual(self.worker.cache.get("b.example.test").fingerprint, renewed.fingerprint)
        self.assertEqual(self.worker.cache.get("c.example.test").fingerprint, also.fingerprint)

    def test_one_object_per_certificate(self):
        """Names served by one certificate share one object (one OpenSSL context), fetched apart or together."""
        wildcard = CA.issue(["*.example.test"])
        self.connect(size=10, certificates=[wildcard])
        a, b = self.handshake("a.example.test", "b.example.test")
        [c] = self.handshake("c.example.test")
        self.assertIs(a, b)
        self.assertIs(a, c)

    def test_absent_held_without_on_demand(self):
        """
        Without on-demand issuance a name the master has none for is held
        as such (no fetch per handshake) until the master gets one.
        """
        self.connect()
        [found] = self.handshake("none.test")
        self.assertIs(found, self.worker.cache.fallback)
        self.assertIsNone(self.worker.gate.before_handshake("none.test"))
        self.assertEqual(self.fetched, [["none.test"]])
        self.assertEqual(self.daemon.manager.asked, [])
        issued = CA.issue(["none.test"])
        self.cache.put(issued)
        self.changed()
        self.assertEqual(self.worker.cache.get("none.test").fingerprint, issued.fingerprint)
        self.assertEqual(self.fetched, [["none.test"]])

    def test_on_demand_asks_every_time(self):
        """With on-demand issuance a name the master has none for goes to its gate on every handshake."""
        self.connect(on_demand=True)
        for _ in range(2):
            waiting = self.worker.gate.before_handshake("new.test")
            self.pump.flush()
            self.daemon.manager.waiting["new.test"].callback(None)
            self.pump.flush()
            # Held for the master's gate: counted as held.
            self.assertIsNone(self.successResultOf(waiting))
        self.assertEqual(self.daemon.manager.asked, ["new.test", "new.test"])

    def test_refresh_never_orders(self):
        """A certificate removed in the master is not ordered again by the worker's refetch."""
        self.connect(on_demand=True, certificates=[CA.issue(["a.test"])])
        self.handshake("a.test")
        self.cache.remove("a.test")
        self.changed()
        self.assertEqual(self.daemon.manager.asked, [])

    def test_resize(self):
        """A reload with a smaller tls.cache_size trims the worker's cache."""
        certs = [CA.issue(["%s.test" % (n,)]) for n in "abc"]
        self.connect(size=3, certificates=certs)
        self.handshake("a.test", "b.test", "c.test")
        self.assertEqual(len(self.worker.cache), 3)
        self.mode.reconfigure(parse_config({"workers": 2, "tls": {"cache_size": 1}}, "/tmp"))
        self.pump.flush()
        self.assertEqual(self.worker.cache.names(), ["c.test"])


class CacheUnitTests(SynchronousTestCase):
    """
    Tests for WorkerCertificateCache on its own.
    """

    def test_bounds_apart(self):
        """Names without a certificate do not push out names with one."""
        cache = WorkerCertificateCache(CA.issue(["fallback.invalid"]), size=2)
        cache.put(CA.issue(["a.test"]))
        for n in range(10):
            cache.answer([], ["random%d.test" % (n,)])
        self.assertEqual(cache.names(), ["a.test"])
        self.assertTrue(cache.holds("random9.test"))
        self.assertFalse(cache.holds("random0.test"))

    def test_changed_entry_refused(self):
        """
        A notice's certificate that does not parse is not served: the name
        is dropped (to fetch again); the other names are replaced.
        """
        cache = WorkerCertificateCache(CA.issue(["fallback.invalid"]), size=4)
        cache.put(CA.issue(["a.test"]))
        cache.put(CA.issue(["b.test"]))
        renewed = CA.issue(["b.test"])
        broken = dict(channel.encode_certificate(CA.issue(["a.test"]), ["a.test"]), key="junk")
        notice = [broken, channel.encode_certificate(renewed, ["b.test", "c.test"])]
        dropped = cache.changed(["a.test", "b.test", "c.test"], notice)
        self.assertEqual(dropped, ["a.test"])
        self.assertEqual(cache.names(), ["b.test"])
        self.assertEqual(cache.get("b.test").fingerprint, renewed.fingerprint)
        self.flushLoggedErrors()

    def test_fetcher_without_channel(self):
        """A fetch sent while the channel is down waits (the gate's timeout is the backstop)."""
        cache = WorkerCertificateCache(CA.issue(["fallback.invalid"]), size=2)
        from twisted.internet.defer import Deferred

        fetcher = CertificateFetcher(cache, lambda command, **arguments: Deferred())
        self.assertNoResult(fetcher.before_handshake("a.test"))
        self.assertEqual(fetcher.fetches, 1)

    def test_answer_refused(self):
        """
        An answer's entries that do not parse (no certificate, a broken
        leaf, a broken intermediate, a key not the leaf's) are refused with
        a CertificateError and not held; the good one is held in served form.
        """
        from kongacme.errors import CertificateError

        cache = WorkerCertificateCache(CA.issue(["fallback.invalid"]), size=8)
        intermediate = CA.intermediate()
        good = intermediate.issue(["good.test"], include_ca=True)
        other = CA.issue(["other.test"])
        encoded = channel.encode_certificate(good, ["good.test"])
        leaf_end = encoded["chain"].index("-----END CERTIFICATE-----") + len("-----END CERTIFICATE-----")
        for broken, why in [
            (dict(encoded, names=["none.test"], chain="junk"), "no certificate found"),
            (dict(encoded, names=["leaf.test"], chain="-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----"),
             "no valid PEM certificate"),
            (dict(encoded, names=["inter.test"], chain=encoded["chain"][:leaf_end] + "\n-----BEGIN CERTIFICATE-----\n"),
             "no valid PEM certificate"),
            (dict(encoded, names=["key.test"], key=channel.encode_certificate(other)["key"]),
             "private key does not match"),
        ]:
            e = self.assertRaises(CertificateError, cache.answer, [broken, encoded], [])
            self.assertIn(why, str(e))
        self.assertEqual(cache.names(), ["good.test"])
        held = cache.lookup("good.test")
        self.assertIsInstance(held, ServedCertificate)
        self.assertEqual(held.fingerprint, good.fingerprint)
        self.assertEqual(held.chain.certificates, good.chain[1:])
