"""
Tests for kongacme.issuance.fallback (which failures are the CA's fault)
and kongacme.issuance.issuers (the primary and its fallbacks as one issuer).
"""

from __future__ import annotations

import json
from typing import Any

from treq.testing import StubTreq
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from zope.interface.verify import verifyObject

from kongacme.acme.ari import cert_id
from kongacme.acme.eab import ExternalAccountRequired
from kongacme.acme.order import OrderFailed
from kongacme.acme.polling import PollTimeout
from kongacme.errors import AcmeProblem, AcmeTimeout, AcmeTransportError, DNSError
from kongacme.interfaces import IIssuer
from kongacme.issuance.fallback import TIMEOUT_REST, ca_at_fault
from kongacme.config import parse_config
from kongacme.issuance.issuers import IssuedBy, IssuerChain, IssuerLedger, make_issuer
from kongacme.storage import keys
from kongacme.storage.errors import StorageError
from kongacme.testing import FakeIssuer, MemoryChallengeTokenStore, MemoryStorage, TestCA
from tests.fakeca import FakeCA

ERR = "urn:ietf:params:acme:error:"


class CaAtFaultTests(SynchronousTestCase):
    """Tests for ca_at_fault."""

    def test_ca_faults(self) -> None:
        """Unreachable, timed out, 5xx, 429, rateLimited and serverInternal are the CA's fault."""
        for error in (
            AcmeTransportError("https://ca/dir", "Connection was refused by other side"),
            AcmeTimeout("https://ca/dir", "no complete answer within 30 s"),
            AcmeProblem("about:blank", "Service Unavailable", 503),
            AcmeProblem("about:blank", "Bad Gateway", 502),
            AcmeProblem(ERR + "rateLimited", "too many certificates", 429, retry_after=60),
            AcmeProblem(ERR + "rateLimited", "too many new orders"),
            AcmeProblem("about:blank", "Too Many Requests", 429),
            AcmeProblem(ERR + "serverInternal", "oops", 500),
            AcmeProblem(ERR + "badNonce", "still bad", 400),
            PollTimeout("order of a.test", 90.0),
            ConnectionRefusedError(),
        ):
            self.assertTrue(ca_at_fault(error), error)

    def test_not_ca_faults(self) -> None:
        """A refused name, a failed challenge, a bad request, account/EAB, DNS provider and storage errors are not."""
        for error in (
            AcmeProblem(ERR + "rejectedIdentifier", "blocked name", 400),
            AcmeProblem(ERR + "caa", "CAA forbids", 403),
            AcmeProblem(ERR + "unauthorized", "wrong key authorization", 403),
            AcmeProblem(ERR + "connection", "could not connect to a.test:80"),
            AcmeProblem(ERR + "dns", "NXDOMAIN"),
            AcmeProblem(ERR + "incorrectResponse", "wrong body"),
            AcmeProblem(ERR + "malformed", "bad JWS", 400),
            AcmeProblem(ERR + "badCSR", "bad CSR", 400),
            AcmeProblem(ERR + "accountDoesNotExist", "no account", 400),
            AcmeProblem(ERR + "externalAccountRequired", "eab", 403),
            AcmeProblem("about:blank", "Not Found", 404),
            ExternalAccountRequired("https://ca/dir"),
            OrderFailed("a.test", "http-01 challenge is invalid"),
            DNSError("127.0.0.1:53", "refused"),
            StorageError("get", "down"),
            ValueError("bug"),
        ):
            self.assertFalse(ca_at_fault(error), error)


def fake(directory: str, ca: TestCA) -> FakeIssuer:
    issuer = FakeIssuer(ca)
    issuer.directory = directory  # type: ignore[attr-defined]
    return issuer


class IssuerChainTests(SynchronousTestCase):
    """Tests for IssuerChain."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.storage = MemoryStorage(self.clock)
        ca = TestCA.create()
        self.primary = fake("https://one.test/dir", ca)
        self.second = fake("https://two.test/dir", ca)
        self.third = fake("https://three.test/dir", ca)
        self.ledger = IssuerLedger(self.clock)
        self.chain = IssuerChain([self.primary, self.second, self.third], self.ledger, self.storage, self.clock)

    def test_interface(self) -> None:
        """IssuerChain provides IIssuer."""
        verifyObject(IIssuer, self.chain)

    def test_needs_primary(self) -> None:
        """An empty chain is refused."""
        self.assertRaises(ValueError, IssuerChain, [], self.ledger, self.storage, self.clock)

    def test_primary_issues(self) -> None:
        """A working primary issues; no fallback is asked; the record says primary, in memory and storage."""
        certified = self.successResultOf(self.chain.issue("a.test"))
        self.assertEqual((self.primary.requests, self.second.requests), (["a.test"], []))
        self.assertEqual(self.ledger.issued_by(certified), IssuedBy("https://one.test/dir", False))
        stored = json.loads(self.successResultOf(self.storage.get(keys.issued_by("a.test"))))
        self.assertEqual(stored, {"directory": "https://one.test/dir", "fallback": False,
                                  "fingerprint": certified.fingerprint})

    def test_falls_back_on_ca_fault(self) -> None:
        """An unreachable primary: the order goes to the next CA at once, logged once, recorded as a fallback."""
        self.primary.fail_with = AcmeTransportError("https://one.test/dir", "Connection was refused")
        certified = self.successResultOf(self.chain.issue("a.test"))
        self.assertEqual((self.primary.requests, self.second.requests, self.third.requests),
                         (["a.test"], ["a.test"], []))
        self.assertEqual(self.ledger.issued_by(certified), IssuedBy("https://two.test/dir", True))
        self.assertEqual(self.ledger.fallbacks, {("https://one.test/dir", "https://two.test/dir"): 1})
        health = self.ledger.health("https://one.test/dir")
        self.assertEqual((health.available, health.failed, health.down_since), (False, 1, self.clock.seconds()))
        self.assertEqual(self.ledger.health("https://two.test/dir").issued, 1)

    def test_no_fallback_on_refusal(self) -> None:
        """A refused name fails the order at the primary; no fallback is asked; the primary counts as up."""
        problem = AcmeProblem(ERR + "rejectedIdentifier", "no", 400)
        self.primary.fail_with = problem
        self.assertIs(self.failureResultOf(self.chain.issue("a.test")).value, problem)
        self.assertEqual(self.second.requests, [])
        self.assertTrue(self.ledger.health("https://one.test/dir").available)

    def test_all_fail(self) -> None:
        """When every CA fails through its fault, the last failure is raised after each was asked once."""
        self.primary.fail_with = AcmeProblem("about:blank", "down", 503)
        self.second.fail_with = AcmeProblem(ERR + "rateLimited", "slow", 429)
        last = self.third.fail_with = AcmeTransportError("https://three.test/dir", "timeout")
        self.assertIs(self.failureResultOf(self.chain.issue("a.test")).value, last)
        self.assertEqual([len(i.requests) for i in (self.primary, self.second, self.third)], [1, 1, 1])

    def test_fallback_refusal_ends(self) -> None:
        """A fallback refusing the name ends the order there (the third CA is not asked)."""
        self.primary.fail_with = AcmeProblem("about:blank", "down", 503)
        self.second.fail_with = AcmeProblem(ERR + "caa", "CAA", 403)
        self.failureResultOf(self.chain.issue("a.test"), AcmeProblem)
        self.assertEqual(self.third.requests, [])

    def test_primary_first_again(self) -> None:
        """After a fallback, the next order (a renewal) asks the primary first again."""
        self.primary.fail_with = AcmeTransportError("https://one.test/dir", "refused")
        first = self.successResultOf(self.chain.issue("a.test"))
        self.primary.fail_with = None
        renewed = self.successResultOf(self.chain.issue("a.test", first.key, replaces="id"))
        self.assertEqual(self.ledger.issued_by(renewed), IssuedBy("https://one.test/dir", False))
        self.assertEqual(self.primary.calls[-1], ("a.test", first.key, "id"))
        self.assertTrue(self.ledger.health("https://one.test/dir").available)

    def test_replaces_only_at_issuer(self) -> None:
        """
        The ARI replaces identifier goes only to the CA that issued the
        certificate it names (the primary when unknown): a renewal at the
        primary of a certificate from the fallback sends none.
        """
        self.primary.fail_with = AcmeProblem("about:blank", "down", 503)
        self.successResultOf(self.chain.issue("a.test", replaces="unknown-id"))
        self.assertEqual((self.primary.calls[-1][2], self.second.calls[-1][2]), ("unknown-id", None))
        from_fallback = self.successResultOf(self.chain.issue("b.test"))
        self.primary.fail_with = None
        ari_id = cert_id(from_fallback.leaf)
        self.successResultOf(self.chain.issue("b.test", from_fallback.key, replaces=ari_id))
        self.assertEqual(self.primary.calls[-1], ("b.test", from_fallback.key, None))
        self.primary.fail_with = AcmeProblem("about:blank", "down", 503)
        self.successResultOf(self.chain.issue("b.test", from_fallback.key, replaces=ari_id))
        self.assertEqual(self.second.calls[-1], ("b.test", from_fallback.key, ari_id))

    def test_retry_after_skips(self) -> None:
        """A CA that answered Retry-After is skipped until then while a later CA remains; then asked again."""
        self.primary.fail_with = AcmeProblem(ERR + "rateLimited", "slow", 429, retry_after=600)
        self.successResultOf(self.chain.issue("a.test"))
        self.successResultOf(self.chain.issue("b.test"))
        self.assertEqual(self.primary.requests, ["a.test"])
        self.assertEqual(self.second.requests, ["a.test", "b.test"])
        self.clock.advance(601)
        self.primary.fail_with = None
        self.successResultOf(self.chain.issue("c.test"))
        self.assertEqual(self.primary.requests, ["a.test", "c.test"])

    def test_timeout_rests(self) -> None:
        """
        A CA that timed out is passed over for TIMEOUT_REST seconds while a
        later CA remains (each order would wait the whole timeout again);
        a refused connection fails fast and is asked again at once.
        """
        self.primary.fail_with = AcmeTimeout("https://one.test/dir", "no complete answer within 30 s")
        self.successResultOf(self.chain.issue("a.test"))
        self.successResultOf(self.chain.issue("b.test"))
        self.assertEqual((self.primary.requests, self.second.requests), (["a.test"], ["a.test", "b.test"]))
        self.clock.advance(TIMEOUT_REST)
        self.primary.fail_with = AcmeTransportError("https://one.test/dir", "Connection was refused")
        self.successResultOf(self.chain.issue("c.test"))
        self.successResultOf(self.chain.issue("d.test"))
        self.assertEqual(self.primary.requests, ["a.test", "c.test", "d.test"])
        self.assertEqual(self.ledger.fallbacks[("https://one.test/dir", "https://two.test/dir")], 4)

    def test_lookup_from_storage(self) -> None:
        """A ledger without memory of a certificate finds its record in storage, if it is of that certificate."""
        self.primary.fail_with = AcmeProblem("about:blank", "down", 503)
        certified = self.successResultOf(self.chain.issue("a.test"))
        fresh = IssuerLedger(self.clock)
        self.assertIsNone(fresh.issued_by(certified))
        found = self.successResultOf(fresh.lookup(self.storage, "a.test", certified))
        self.assertEqual(found, IssuedBy("https://two.test/dir", True))
        other = self.primary.ca.issue(["a.test"])
        self.assertIsNone(self.successResultOf(IssuerLedger(self.clock).lookup(self.storage, "a.test", other)))

    def test_remember_bounded(self) -> None:
        """The in-memory record keeps at most max_records certificates, dropping the oldest."""
        ledger = IssuerLedger(self.clock, max_records=2)
        certs = [self.primary.ca.issue(["%d.test" % i]) for i in range(3)]
        for certified in certs:
            ledger.remember(certified.fingerprint, IssuedBy("https://one.test/dir", False))
        self.assertEqual([ledger.issued_by(c) is not None for c in certs], [False, True, True])

    def test_revoke_at_issuer(self) -> None:
        """Revocation goes to the CA that issued the certificate."""
        revoked: list = []
        for issuer in (self.primary, self.second):
            issuer.revoke = lambda certified, reason=0, issuer=issuer: revoked.append(issuer.directory)  # type: ignore
        self.primary.fail_with = AcmeProblem("about:blank", "down", 503)
        certified = self.successResultOf(self.chain.issue("a.test"))
        self.chain.revoke(certified)
        self.assertEqual(revoked, ["https://two.test/dir"])


class _Unavailable(Resource):
    """A CA behind a load balancer that answers 503 to everything."""

    isLeaf = True

    def render(self, request: Any) -> bytes:
        request.setResponseCode(503)
        return b"Service Unavailable"


class MakeIssuerTests(SynchronousTestCase):
    """Tests for make_issuer: the fallback issuers' settings, accounts and ZeroSSL's automatic EAB."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.storage = MemoryStorage(self.clock)
        self.zerossl = FakeCA("https://acme.zerossl.com", directory_path="/v2/DV90", external_account_required=True)
        self.config = parse_config(
            {
                "acme": {"account_email": "ops@example.com", "api_uri": "https://primary.test/dir",
                         "tos_accepted": True, "cert_type": "ecc", "domains": ["*.example.com"],
                         "eab_kid": "primary-kid", "eab_hmac_key": "c2VjcmV0"},
                "issuance": {"zerossl_eab_url": "https://eab.fake.test/zerossl-eab",
                             "fallback_issuers": [{"api_uri": "https://acme.zerossl.com/v2/DV90"}]},
            },
            ".",
        )
        clients = {"https://primary.test/dir": StubTreq(_Unavailable()),
                   "https://acme.zerossl.com/v2/DV90": StubTreq(self.zerossl)}
        self.chain = make_issuer(self.config.acme, self.config.issuance, self.storage,
                                 MemoryChallengeTokenStore(self.clock), self.clock, http_for=clients.__getitem__)

    def test_zerossl_fallback(self) -> None:
        """
        The primary answers 503; the ZeroSSL fallback registers its own
        account with EAB credentials fetched for the primary's email (not
        the primary's EAB), stored under its own directory, and issues.
        """
        d = self.chain.issue("a.example.com")
        self.clock.advance(60)
        certified = self.successResultOf(d)
        self.assertEqual(certified.names, ("a.example.com",))
        self.assertIn(("POST", "/zerossl-eab"), self.zerossl.log)
        self.assertEqual(len(self.zerossl.accounts), 1)
        self.assertEqual(self.chain.ledger.issued_by(certified), IssuedBy("https://acme.zerossl.com/v2/DV90", True))
        stored = self.successResultOf(self.storage.list(keys.ACCOUNT_PREFIX))
        self.assertEqual(
            sorted(stored),
            sorted([keys.account_key("https://primary.test/dir", "ops@example.com"),
                    keys.account_key("https://acme.zerossl.com/v2/DV90", "ops@example.com")]),
        )

    def test_settings(self) -> None:
        """A fallback gets the primary's email and ca_bundle, not its EAB or account key."""
        primary, fallback = self.chain._issuers
        self.assertEqual(self.chain.directories, ["https://primary.test/dir", "https://acme.zerossl.com/v2/DV90"])
        self.assertEqual(
            (fallback._acme.account_email, fallback._acme.eab_kid, fallback._acme.account_key),
            ("ops@example.com", None, None),
        )
        self.assertEqual(primary._acme.eab_kid, "primary-kid")
