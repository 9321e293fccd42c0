"""
Tests for kongacme.acme.challenges: the choice among offered challenges
and the dns-01 solver's waits and error paths, with a fake DNS provider.
"""

from __future__ import annotations

from typing import Any

import attrs
import josepy as jose
from acme import challenges, messages
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from kongacme.acme.challenges import Dns01Solver, Http01Solver, TlsAlpn01Solver, choose
from kongacme.errors import AcmeTransportError, DNSError
from kongacme.interfaces import IChallengeSolver, IChallengeTokenStore, IDNSRecords
from kongacme.storage.alpn_keys import TlsAlpnKeyAuthorizations
from kongacme.storage.memory import MemoryStorage
from kongacme.web.tokens import MemoryChallengeTokenStore

KEY = jose.JWKEC(key=ec.generate_private_key(ec.SECP256R1()))


@implementer(IDNSRecords)
@attrs.define
class FakeRecords:
    """TXT records in a dict; visible after ``delay_checks`` checks; ``refuse`` fails additions."""

    delay_checks: int = 0
    refuse: bool = False
    server: str = "fake:53"
    records: dict = attrs.Factory(dict)
    checks: int = 0

    def add_txt(self, name: str, value: str, ttl: int) -> Deferred[None]:
        if self.refuse:
            return fail(DNSError(self.server, "update refused: REFUSED"))
        self.records.setdefault(name, []).append(value)
        return succeed(None)

    def remove_txt(self, name: str, value: str) -> Deferred[None]:
        self.records[name].remove(value)
        return succeed(None)

    def txt_visible(self, name: str, value: str) -> Deferred[bool]:
        self.checks += 1
        return succeed(self.checks > self.delay_checks and value in self.records.get(name, ()))

    def close(self) -> Deferred[None]:
        return succeed(None)


class ChooseTests(SynchronousTestCase):
    """Tests for choose()."""

    def test_preference_order(self) -> None:
        """The first solver (in preference order) whose type is offered wins, whatever the CA's order."""
        http, dns = Http01Solver(MemoryChallengeTokenStore(Clock())), Dns01Solver(FakeRecords(), Clock())
        offered = [{"type": "http-01"}, {"type": "tls-alpn-01"}, {"type": "dns-01"}]
        self.assertIs(choose(offered, [dns, http])[0], dns)
        self.assertIs(choose(offered, [http, dns])[0], http)
        self.assertIs(choose([{"type": "dns-01"}], [http, dns])[0], dns)
        self.assertIsNone(choose([{"type": "tls-alpn-01"}], [http, dns]))
        verifyObject(IChallengeSolver, http)
        verifyObject(IChallengeSolver, dns)
        verifyObject(IDNSRecords, FakeRecords())


class Dns01SolverTests(SynchronousTestCase):
    """Tests for Dns01Solver with a fake IDNSRecords."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.challenge = challenges.DNS01(token=b"t" * 32)

    def solver(self, records: Any, timeout: float = 10.0) -> Dns01Solver:
        return Dns01Solver(records, self.clock, propagation_timeout=timeout, ttl=30, poll_interval=1.0)

    def test_waits_until_visible(self) -> None:
        """present() fires only once the record is visible, with a handle cleanup() deletes it by."""
        records = FakeRecords(delay_checks=3)
        d = self.solver(records).present("example.test", self.challenge, KEY)
        self.assertNoResult(d)
        self.clock.pump([1.0] * 3)
        name, value = self.successResultOf(d)
        self.assertEqual(name, "_acme-challenge.example.test")
        self.assertEqual(value, self.challenge.validation(KEY))
        self.assertEqual(records.records[name], [value])
        self.successResultOf(self.solver(records).cleanup((name, value)))
        self.assertEqual(records.records[name], [])

    def test_propagation_timeout(self) -> None:
        """A record never visible: DNSError naming the setting, and the record is deleted."""
        records = FakeRecords(delay_checks=10**6)
        d = self.solver(records, timeout=5).present("example.test", self.challenge, KEY)
        self.clock.pump([1.0] * 6)
        error = self.failureResultOf(d, DNSError).value
        self.assertIn("issuance.dns01.propagation_timeout", error.reason)
        self.assertEqual(records.records["_acme-challenge.example.test"], [])

    def test_refused(self) -> None:
        """A refused update fails present() with the provider's DNSError, nothing polled."""
        records = FakeRecords(refuse=True)
        error = self.failureResultOf(self.solver(records).present("example.test", self.challenge, KEY), DNSError)
        self.assertIn("REFUSED", error.value.reason)
        self.assertEqual(records.checks, 0)


class TlsAlpn01SolverTests(SynchronousTestCase):
    """Tests for TlsAlpn01Solver and key_authorization_of, over the memory-and-storage store."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.storage = MemoryStorage(self.clock)
        self.store = TlsAlpnKeyAuthorizations(self.clock, self.storage)
        self.solver = TlsAlpn01Solver(self.store)

    def offered(self, token: Any = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA") -> Any:
        body = messages.ChallengeBody.from_json(
            {"type": "tls-alpn-01", "url": "https://ca.test/chall/1", "status": "pending", "token": token}
        )
        return body.chall

    def test_provides(self) -> None:
        """The solver provides IChallengeSolver, the store IChallengeTokenStore."""
        verifyObject(IChallengeSolver, self.solver)
        verifyObject(IChallengeTokenStore, self.store)
        self.assertEqual(self.solver.typ, "tls-alpn-01")

    def test_present_cleanup(self) -> None:
        """
        The key authorization (token.thumbprint, RFC 8555 §8.1) is published
        by identifier, in memory and under <identifier>#tls-alpn-01 in the
        storage (another node reads it there), and removed from both.
        """
        handle = self.successResultOf(self.solver.present("a.example.test", self.offered(), KEY))
        expected = challenges.HTTP01(token=jose.b64decode("evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA"))
        expected_ka = expected.key_authorization(KEY)
        self.assertEqual(self.successResultOf(self.store.get("a.example.test")), expected_ka)
        self.assertEqual(self.successResultOf(self.storage.get("a.example.test#tls-alpn-01")), expected_ka.encode())
        other_node = TlsAlpnKeyAuthorizations(self.clock, self.storage)
        self.assertEqual(self.successResultOf(other_node.get("a.example.test")), expected_ka)
        self.successResultOf(self.solver.cleanup(handle))
        self.assertIsNone(self.successResultOf(self.store.get("a.example.test")))
        self.assertIsNone(self.successResultOf(other_node.get("a.example.test")))

    def test_expiry(self) -> None:
        """An entry not removed expires with its TTL, in memory as in the storage."""
        self.successResultOf(self.solver.present("a.example.test", self.offered(), KEY))
        self.clock.advance(3601)
        self.assertIsNone(self.successResultOf(self.store.get("a.example.test")))

    def test_memory_only(self) -> None:
        """Without a storage (no acme section yet), the process's memory alone."""
        store = TlsAlpnKeyAuthorizations(self.clock)
        self.successResultOf(TlsAlpn01Solver(store).present("a.example.test", self.offered(), KEY))
        self.assertIsNotNone(self.successResultOf(store.get("a.example.test")))
        self.successResultOf(store.remove("a.example.test"))
        self.assertIsNone(self.successResultOf(store.get("a.example.test")))

    def test_bad_token(self) -> None:
        """A token that is not base64url of 128 bits or more fails with the challenge's URL."""
        for token in ("short", "has space" * 4 + "xxxxxxxxxxxxxxxxxxxxxxxx", None, 42):
            failure = self.failureResultOf(self.solver.present("a.example.test", self.offered(token), KEY))
            failure.trap(AcmeTransportError)
            self.assertIn("https://ca.test/chall/1", str(failure.value))
        self.assertIsNone(self.successResultOf(self.store.get("a.example.test")))

    def test_corrupt_value(self) -> None:
        """A non-ASCII value in the storage reads as none, with a warning."""
        self.successResultOf(self.storage.set("b.example.test#tls-alpn-01", "é".encode("utf-8"), 60))
        self.assertIsNone(self.successResultOf(self.store.get("b.example.test")))
