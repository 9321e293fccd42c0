"""
Tests for kongacme.acme.challenges: the choice among offered challenges
and the dns-01 solver's waits and error paths, with a fake DNS provider.
"""

from __future__ import annotations

from typing import Any

import attrs
import josepy as jose
from acme import challenges
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from kongacme.acme.challenges import Dns01Solver, Http01Solver, choose
from kongacme.errors import DNSError
from kongacme.interfaces import IChallengeSolver, IDNSRecords
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
