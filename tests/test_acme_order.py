"""
Tests for kongacme.acme.order (and kongacme.acme.keys): the issuance flow
against the fake CA with a Clock (polling, Retry-After, failures, chain
choice), and real issuance from Pebble with every key type, nonce
rejection, alternate roots and a refused name.
"""

from __future__ import annotations

from typing import Any, Optional

from cryptography import x509
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import PolicyBuilder, Store
from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, DeferredList
from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import HTTPConnectionPool
from zope.interface import implementer
from zope.interface.verify import verifyObject

from kongacme.acme.client import AcmeClient
from kongacme.acme.keys import generate_account_key, generate_private_key, private_key_pem
from kongacme.acme.order import AcmeIssuer, OrderFailed, issue
from kongacme.acme.polling import PollSchedule, PollTimeout
from kongacme.acme.trust import make_http_client
from kongacme.errors import AcmeProblem, AcmeTransportError
from kongacme.interfaces import IChallengeTokenStore, IIssuer
from kongacme.tls.certs import CertifiedKey
from kongacme.web.tokens import MemoryChallengeTokenStore
from tests.fakeca import FakeCA
from tests.pebble import PebbleFixture, start_http01_responder


def cn(name: x509.Name) -> str:
    return str(name.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


@implementer(IChallengeTokenStore)
class CountingTokenStore:
    """A memory token store that counts writes."""

    def __init__(self, clock: Any) -> None:
        self.store = MemoryChallengeTokenStore(clock)
        self.puts = 0

    def get(self, token: str) -> Any:
        return self.store.get(token)

    def put(self, token: str, key_authorization: str, ttl: float = 3600) -> Any:
        self.puts += 1
        return self.store.put(token, key_authorization, ttl)

    def remove(self, token: str) -> Any:
        return self.store.remove(token)

    def __len__(self) -> int:
        return len(self.store)


class FakeIssueTests(SynchronousTestCase):
    """
    Tests for issue against the fake CA, driven by a Clock.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.tokens = CountingTokenStore(self.clock)
        self.ca = FakeCA(token_store=self.tokens)
        d = AcmeClient.from_directory(self.ca.directory_url, StubTreq(self.ca), self.clock, generate_account_key())
        self.client = self.successResultOf(d)
        self.successResultOf(self.client.register("ops@example.com", True))
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def issue(self, host: str = "demo.test", **kwargs: Any) -> Any:
        d = issue(self.client, host, generate_private_key("ecc"), self.tokens, clock=self.clock, **kwargs)
        self.clock.pump([0.01] * 1000)
        return d

    def paths(self, prefix: str) -> list[str]:
        return [path for method, path in self.ca.log if path.startswith(prefix)]

    def test_issue(self) -> None:
        """
        A certificate is issued for the host with the given key, through
        the challenge, polling while the CA validates and issues; the token
        is gone from the store afterwards; one info line reports it.
        """
        self.ca.authz_polls = 2
        self.ca.order_polls = 2
        key = generate_private_key("ecc")
        d = issue(self.client, "Demo.Test", key, self.tokens, clock=self.clock)
        self.clock.pump([0.01] * 200)
        certified = self.successResultOf(d)
        self.assertIsInstance(certified, CertifiedKey)
        self.assertEqual(certified.names, ("demo.test",))
        self.assertEqual(certified.source, "acme:demo.test")
        self.assertEqual(certified.key_pem(), private_key_pem(key))
        self.assertEqual(len(certified.chain), 2)
        self.assertEqual((self.tokens.puts, len(self.tokens)), (1, 0))
        self.assertEqual(len(self.paths("/chall/")), 1)
        self.assertEqual(len(self.paths("/authz/")), 4)
        self.assertEqual(len(self.paths("/order/")), 3)
        [info] = [e for e in self.events if e["log_level"] == LogLevel.info and e.get("host") == "demo.test"]
        self.assertIn("elapsed_ms", info)

    def test_default_schedule_is_quick(self) -> None:
        """
        With the default schedule a CA that answers at once is polled
        within tens of milliseconds, not seconds.
        """
        self.ca.authz_polls = 1
        self.ca.order_polls = 1
        d = issue(self.client, "demo.test", generate_private_key("ecc"), self.tokens, clock=self.clock)
        self.clock.pump([0.005] * 20)
        self.successResultOf(d)

    def test_retry_after(self) -> None:
        """
        The CA's Retry-After is honoured while polling the authorization.
        """
        self.ca.authz_polls = 1
        self.ca.retry_after = "3"
        d = issue(self.client, "demo.test", generate_private_key("ecc"), self.tokens, clock=self.clock)
        self.clock.advance(0.01)
        self.assertEqual(len(self.paths("/authz/")), 2)
        self.clock.advance(2.9)
        self.assertEqual(len(self.paths("/authz/")), 2)
        self.clock.advance(0.1)
        self.assertEqual(len(self.paths("/authz/")), 3)
        self.clock.pump([0.01] * 10)
        self.successResultOf(d)

    def test_reused_authorization(self) -> None:
        """
        Authorizations that are already valid are not answered again.
        """
        self.ca.reuse_authz = True
        self.successResultOf(self.issue())
        self.assertEqual(self.paths("/chall/"), [])
        self.assertEqual(self.tokens.puts, 0)

    def test_ip_address_refused(self) -> None:
        """
        An IP address is refused before anything is sent (Kong sent IPv4
        names as dns identifiers, which CAs reject).
        """
        before = list(self.ca.log)
        for host in ("192.0.2.1", "2001:db8::1"):
            self.assertRaises(ValueError, issue, self.client, host, generate_private_key("ecc"), self.tokens)
        self.assertEqual(self.ca.log, before)

    def test_token_store_checked(self) -> None:
        """
        The token store must provide IChallengeTokenStore.
        """
        self.assertRaises(TypeError, issue, self.client, "demo.test", generate_private_key("ecc"), {})

    def test_validation_fails(self) -> None:
        """
        When the CA cannot validate (it reads another store), the
        challenge's problem is raised, logged at warn, and the token is
        removed from our store.
        """
        self.ca.token_store = MemoryChallengeTokenStore(self.clock)
        problem = self.failureResultOf(self.issue(), AcmeProblem).value
        self.assertEqual(problem.type, "urn:ietf:params:acme:error:unauthorized")
        self.assertIn("key authorization", problem.detail)
        self.assertEqual((self.tokens.puts, len(self.tokens)), (1, 0))
        [warn] = [e for e in self.events if e["log_level"] == LogLevel.warn]
        self.assertEqual((warn["host"], warn["problem_type"], warn["status"]), ("demo.test", problem.type, 403))

    def test_tokens_removed_on_failure(self) -> None:
        """
        A failure after the challenge (here at finalize) still removes the
        token.
        """

        def hook(request: Any, path: str, payload: Any) -> Any:
            if path.startswith("/finalize/"):
                return self.ca.problem(request, 500, "serverInternal", "oops")
            return None

        self.ca.hooks.append(hook)
        problem = self.failureResultOf(self.issue(), AcmeProblem).value
        self.assertEqual(
            (problem.type, problem.detail, problem.status), ("urn:ietf:params:acme:error:serverInternal", "oops", 500)
        )
        self.assertEqual((self.tokens.puts, len(self.tokens)), (1, 0))

    def test_cancel(self) -> None:
        """
        Cancelling an issuance stops it and still removes the token.
        """
        self.ca.authz_polls = 1000
        d = issue(self.client, "demo.test", generate_private_key("ecc"), self.tokens, clock=self.clock)
        self.clock.advance(0.5)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual((self.tokens.puts, len(self.tokens)), (1, 0))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_poll_timeout(self) -> None:
        """
        An authorization that never leaves pending ends in PollTimeout after
        the schedule's total.
        """
        self.ca.authz_polls = 10**6
        d = self.issue(schedule=PollSchedule(total=5))
        self.assertEqual(
            str(self.failureResultOf(d, PollTimeout).value),
            "timed out waiting for authorization of demo.test after 5.0 s",
        )
        self.assertEqual(len(self.tokens), 0)

    def test_order_not_ready(self) -> None:
        """
        orderNotReady at finalize: wait for the order to be ready, then
        finalize again.
        """
        refused = []

        def hook(request: Any, path: str, payload: Any) -> Any:
            if path.startswith("/finalize/") and not refused:
                refused.append(path)
                return self.ca.problem(request, 403, "orderNotReady", "not yet")
            return None

        self.ca.hooks.append(hook)
        self.successResultOf(self.issue())
        self.assertEqual(len(self.paths("/finalize/")), 2)

    def test_order_invalid(self) -> None:
        """
        An order that turns invalid while processing fails with its error.
        """
        self.ca.order_polls = 1

        def hook(request: Any, path: str, payload: Any) -> Any:
            if path.startswith("/order/"):
                error = {"type": "urn:ietf:params:acme:error:caa", "detail": "CAA forbids", "status": 403}
                return self.ca.answer(request, 200, {"status": "invalid", "error": error})
            return None

        self.ca.hooks.append(hook)
        problem = self.failureResultOf(self.issue(), AcmeProblem).value
        self.assertEqual((problem.type, problem.detail), ("urn:ietf:params:acme:error:caa", "CAA forbids"))

    def test_no_http01(self) -> None:
        """
        An authorization without an http-01 challenge fails with
        OrderFailed naming what was offered.
        """

        def hook(request: Any, path: str, payload: Any) -> Any:
            if path.startswith("/authz/"):
                challenge = {"type": "dns-01", "url": self.ca.url("/x"), "token": "a" * 43, "status": "pending"}
                body = {
                    "identifier": {"type": "dns", "value": "demo.test"},
                    "status": "pending",
                    "challenges": [challenge],
                }
                return self.ca.answer(request, 200, body)
            return None

        self.ca.hooks.append(hook)
        error = self.failureResultOf(self.issue(), OrderFailed).value
        self.assertIn("offered: dns-01", str(error))

    def test_other_challenges_ignored(self) -> None:
        """
        Challenges of unknown types or with odd fields next to http-01 do
        not get in the way.
        """

        def hook(request: Any, path: str, payload: Any) -> Any:
            if path.startswith("/authz/") and len(self.paths("/authz/")) == 1:
                body = self.ca._authz_json(self.ca.authzs[path.rsplit("/", 1)[1]])
                body["challenges"].insert(0, {"type": "future-01", "token": "?", "url": 5})
                return self.ca.answer(request, 200, body)
            return None

        self.ca.hooks.append(hook)
        self.successResultOf(self.issue())

    def test_garbage(self) -> None:
        """
        Garbage where JSON or a PEM chain is expected is an
        AcmeTransportError.
        """
        for prefix in ("/new-order", "/cert/"):
            self.ca.hooks[:] = [
                lambda request, path, payload, prefix=prefix: b"\x00garbage" if path.startswith(prefix) else None
            ]
            error = self.failureResultOf(self.issue(), AcmeTransportError).value
            self.assertTrue(error.url.startswith(self.ca.url(prefix)), error.url)

    def test_replaces(self) -> None:
        """
        A renewal's newOrder carries ARI's ``replaces`` (RFC 9773 §5); a
        first order does not.
        """
        payloads = []

        def record(request, path, payload):
            if path.startswith("/new-order"):
                payloads.append(payload)
            return None

        self.ca.hooks.append(record)
        self.successResultOf(self.issue(replaces="aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE"))
        self.successResultOf(self.issue())
        self.assertEqual(payloads[0]["replaces"], "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE")
        self.assertNotIn("replaces", payloads[1])

    def test_already_replaced(self) -> None:
        """
        A CA answering ``alreadyReplaced`` gets the same order again without
        ``replaces``, and the certificate is issued.
        """
        payloads = []

        def refuse(request, path, payload):
            if path.startswith("/new-order"):
                payloads.append(payload)
                if "replaces" in payload:
                    return self.ca.problem(request, 409, "alreadyReplaced", "renewed already")
            return None

        self.ca.hooks.append(refuse)
        self.assertIsInstance(self.successResultOf(self.issue(replaces="a.b")), CertifiedKey)
        self.assertEqual(["replaces" in p for p in payloads], [True, False])

    def test_preferred_chain_alternate(self) -> None:
        """
        preferred_chain picks the alternate chain (Link rel="alternate")
        whose top issuer has that CN.
        """
        certified = self.successResultOf(self.issue(preferred_chain="Fake Root Y"))
        self.assertEqual(cn(certified.chain[-1].issuer), "Fake Root Y")
        self.assertEqual(len(self.paths("/alt/")), 1)

    def test_preferred_chain_default(self) -> None:
        """
        When the default chain already matches, no alternate is fetched.
        """
        certified = self.successResultOf(self.issue(preferred_chain="Fake Root X"))
        self.assertEqual(cn(certified.chain[-1].issuer), "Fake Root X")
        self.assertEqual(self.paths("/alt/"), [])

    def test_preferred_chain_missing(self) -> None:
        """
        When no chain matches, the default chain is used.
        """
        certified = self.successResultOf(self.issue(preferred_chain="No Such Root"))
        self.assertEqual(cn(certified.chain[-1].issuer), "Fake Root X")
        self.assertEqual(len(self.paths("/alt/")), 1)

    def test_issuer(self) -> None:
        """
        AcmeIssuer provides IIssuer and makes keys per cert_type and
        rsa_key_size, or reuses the one given (renewal).
        """
        issuer = AcmeIssuer(self.client, self.tokens, cert_type="rsa", rsa_key_size=2048)
        verifyObject(IIssuer, issuer)
        d = issuer.issue("demo.test")
        self.clock.pump([0.01] * 100)
        certified = self.successResultOf(d)
        self.assertEqual((certified.key_type, certified.key.key_size), ("rsa", 2048))
        key = generate_private_key("ecc")
        d = AcmeIssuer(self.client, self.tokens, cert_type="ecc").issue("demo.test", key)
        self.clock.pump([0.01] * 100)
        self.assertEqual(self.successResultOf(d).key_pem(), private_key_pem(key))


def verify_chain(test: TestCase, certified: CertifiedKey, host: str, root: x509.Certificate) -> None:
    """
    Check the chain with cryptography's RFC 5280 path validation: the leaf
    for ``host``, through the chain's intermediates, up to ``root``.
    """
    verifier = PolicyBuilder().store(Store([root])).build_server_verifier(x509.DNSName(host))
    path = verifier.verify(certified.leaf, list(certified.chain[1:]))
    test.assertEqual(path[-1], root)
    certified.leaf.verify_directly_issued_by(certified.chain[1])


class PebbleIssueTests(TestCase):
    """
    Tests for issue against a real Pebble, validating http-01 through the
    daemon's port-80 resource.
    """

    async def start(self, **options: Any) -> None:
        self.tokens = CountingTokenStore(reactor)
        http_port = start_http01_responder(self, self.tokens)
        self.pebble = await PebbleFixture.start(self, http_port, **options)
        pool = HTTPConnectionPool(reactor)
        self.addCleanup(pool.closeCachedConnections)
        http = make_http_client(reactor, self.pebble.ca_bundle, pool=pool)
        self.client = await AcmeClient.from_directory(self.pebble.directory_url, http, reactor, generate_account_key())
        await self.client.register("ops@example.com", tos_accepted=True)

    async def issue_verified(
        self, host: str, key: Any, preferred_chain: Optional[str] = None, root: int = 0
    ) -> CertifiedKey:
        certified = await issue(self.client, host, key, self.tokens, preferred_chain)
        roots = await self.pebble.roots()
        verify_chain(self, certified, host, roots[root])
        self.assertEqual(certified.names, (host,))
        self.assertEqual(certified.key_pem(), private_key_pem(key))
        self.assertEqual(len(self.tokens), 0)
        return certified

    async def test_ecc(self) -> None:
        """
        An ECDSA P-256 certificate is issued and chains to Pebble's root;
        Pebble's certificateValidityPeriod is honoured.
        """
        await self.start(validity=300)
        certified = await self.issue_verified("ecc.demo.test", generate_private_key("ecc"))
        self.assertEqual(certified.key_type, "ecc")
        self.assertTrue(295 <= (certified.not_after - certified.not_before).total_seconds() <= 300)

    async def test_rsa_2048(self) -> None:
        """
        An RSA 2048 certificate is issued and chains to Pebble's root.
        """
        await self.start()
        certified = await self.issue_verified("rsa2048.demo.test", generate_private_key("rsa", 2048))
        self.assertEqual(certified.key.key_size, 2048)

    async def test_rsa_3072(self) -> None:
        """
        An RSA 3072 certificate is issued and chains to Pebble's root.
        """
        await self.start()
        certified = await self.issue_verified("rsa3072.demo.test", generate_private_key("rsa", 3072))
        self.assertEqual(certified.key.key_size, 3072)

    async def test_rsa_4096(self) -> None:
        """
        An RSA 4096 certificate is issued and chains to Pebble's root.
        """
        await self.start()
        certified = await self.issue_verified("rsa4096.demo.test", generate_private_key("rsa", 4096))
        self.assertEqual(certified.key.key_size, 4096)

    async def test_issuer(self) -> None:
        """
        AcmeIssuer with a reactor makes the RSA key in a thread and issues
        a verified certificate; a given key is reused.
        """
        await self.start()
        issuer = AcmeIssuer(self.client, self.tokens, cert_type="rsa", rsa_key_size=2048, reactor=reactor)
        verifyObject(IIssuer, issuer)
        certified = await issuer.issue("issuer.demo.test")
        verify_chain(self, certified, "issuer.demo.test", (await self.pebble.roots())[0])
        self.assertEqual((certified.key_type, certified.key.key_size), ("rsa", 2048))
        renewed = await issuer.issue("issuer.demo.test", certified.key)
        self.assertEqual(renewed.key_pem(), certified.key_pem())

    async def test_authorization_reuse(self) -> None:
        """
        A second order for the same name, which Pebble answers with the
        still-valid authorization, is issued without a new challenge.
        """
        await self.start(authz_reuse=100)
        await self.issue_verified("again.demo.test", generate_private_key("ecc"))
        self.assertEqual(self.tokens.puts, 1)
        await self.issue_verified("again.demo.test", generate_private_key("ecc"))
        self.assertEqual(self.tokens.puts, 1)

    async def test_nonce_rejection(self) -> None:
        """
        With Pebble rejecting half of all good nonces, registration and
        issuance still succeed (badNonce is retried with fresh nonces).
        """
        await self.start(nonce_reject=50)
        for host in ("n1.demo.test", "n2.demo.test"):
            await self.issue_verified(host, generate_private_key("ecc"))
        self.assertIn("reject 50% of good nonces", self.pebble.output)

    async def test_concurrent(self) -> None:
        """
        Several issuances share one client at once.
        """
        await self.start()
        hosts = ["c%d.demo.test" % (i,) for i in range(6)]
        results = await DeferredList(
            [issue(self.client, host, generate_private_key("ecc"), self.tokens) for host in hosts], consumeErrors=True
        )
        self.assertEqual([ok for ok, _ in results], [True] * len(hosts))
        self.assertEqual(sorted(certified.names[0] for _, certified in results), sorted(hosts))
        self.assertEqual(len(self.tokens), 0)

    async def test_preferred_chain(self) -> None:
        """
        With alternate roots, preferred_chain = the alternate root's CN gives
        the chain that verifies against that root; an unknown name falls
        back to the default chain (root 0).
        """
        await self.start(alternate_roots=1)
        roots = await self.pebble.roots()
        self.assertEqual(len(roots), 2)
        alternate_cn = cn(roots[1].subject)
        certified = await self.issue_verified("alt.demo.test", generate_private_key("ecc"), alternate_cn, root=1)
        self.assertEqual(cn(certified.chain[-1].issuer), alternate_cn)
        self.assertRaises(Exception, verify_chain, self, certified, "alt.demo.test", roots[0])
        certified = await self.issue_verified("alt2.demo.test", generate_private_key("ecc"), "No Such Root", root=0)
        self.assertEqual(cn(certified.chain[-1].issuer), cn(roots[0].subject))

    async def test_blocked_name(self) -> None:
        """
        A name on Pebble's domainBlocklist fails with the CA's
        rejectedIdentifier problem and its detail.
        """
        await self.start(domain_blocklist=["blocked.test"])
        with self.assertRaises(AcmeProblem) as caught:
            await issue(self.client, "blocked.test", generate_private_key("ecc"), self.tokens)
        problem = caught.exception
        self.assertEqual(problem.type, "urn:ietf:params:acme:error:rejectedIdentifier")
        self.assertIn("blocked.test", problem.detail)
        self.assertEqual(problem.status, 400)
        self.assertEqual(self.tokens.puts, 0)

    async def test_failed_challenge(self) -> None:
        """
        When the responder does not have the token (it reads another
        store), Pebble's validation fails and its problem is raised; our
        token is removed.
        """
        await self.start()
        other = CountingTokenStore(reactor)
        with self.assertRaises(AcmeProblem) as caught:
            await issue(self.client, "fail.demo.test", generate_private_key("ecc"), other)
        self.assertEqual(caught.exception.type, "urn:ietf:params:acme:error:unauthorized")
        self.assertIn("404", caught.exception.detail)
        self.assertEqual((other.puts, len(other)), (1, 0))
