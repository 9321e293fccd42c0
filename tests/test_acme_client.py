"""
Tests for kongacme.acme.client and kongacme.acme.eab: against the fake CA
(StubTreq) for what Pebble cannot do (ZeroSSL's API, directories without
terms of service), and against a real Pebble for accounts and EAB.
"""

from __future__ import annotations

import json
from typing import Any

import josepy as jose
from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import HTTPConnectionPool

from kongacme.acme.client import AcmeClient, TermsOfServiceNotAccepted
from kongacme.acme.eab import ZEROSSL_EAB_URL, EabCredentialsError, ExternalAccountRequired, eab_binding, is_zerossl
from kongacme.acme.keys import account_key_from_pem, account_key_pem, generate_account_key
from kongacme.acme.trust import make_http_client
from kongacme.errors import AcmeProblem, AcmeTransportError
from tests.fakeca import FakeCA
from tests.pebble import PebbleFixture, free_port

EAB_KID = "kid-1"
EAB_HMAC = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W"


class FakeCAMixin:
    """
    A client of a fake CA over StubTreq, driven by a Clock.
    """

    def client(self, ca: FakeCA, key: jose.JWK | None = None) -> AcmeClient:
        self.clock = Clock()
        d = AcmeClient.from_directory(ca.directory_url, StubTreq(ca), self.clock, key or generate_account_key())
        return self.successResultOf(d)


class DirectoryTests(FakeCAMixin, SynchronousTestCase):
    """
    Tests for AcmeClient.from_directory.
    """

    def test_meta(self) -> None:
        """
        The directory's meta is exposed: terms of service, whether EAB is
        required, whether renewal info (ARI) is offered.
        """
        client = self.client(FakeCA(eab_keys={"k": "a2V5"}, renewal_info=True))
        self.assertEqual(client.terms_of_service, "https://ca.test/terms")
        self.assertTrue(client.external_account_required)
        self.assertEqual(client.renewal_info_url, "https://ca.test/renewal-info")
        self.assertEqual(client.directory["newOrder"], "https://ca.test/new-order")
        plain = self.client(FakeCA(terms_of_service=None))
        self.assertIsNone(plain.terms_of_service)
        self.assertFalse(plain.external_account_required)
        self.assertIsNone(plain.renewal_info_url)
        self.assertIsNone(plain.account_url)

    def test_not_a_directory(self) -> None:
        """
        An answer that is not a directory (garbage, or JSON without the
        required URLs) is an AcmeTransportError.
        """
        for body in (b"<html>hello</html>", b"[]", json.dumps({"newNonce": "https://ca.test/n"}).encode()):
            ca = FakeCA()
            ca.hooks.append(lambda request, path, payload, body=body: body)
            d = AcmeClient.from_directory(ca.directory_url, StubTreq(ca), Clock(), generate_account_key())
            error = self.failureResultOf(d, AcmeTransportError).value
            self.assertEqual(error.url, ca.directory_url)


class RegisterTests(FakeCAMixin, SynchronousTestCase):
    """
    Tests for AcmeClient.register against the fake CA.
    """

    def setUp(self) -> None:
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def test_create_then_find(self) -> None:
        """
        The first registration creates an account (contact mailto:, terms
        agreed); a second client with the same key finds it with
        onlyReturnExisting instead of creating another.
        """
        ca = FakeCA()
        key = generate_account_key()
        client = self.client(ca, key)
        url = self.successResultOf(client.register("ops@example.com", tos_accepted=True))
        self.assertEqual(client.account_url, url)
        self.assertEqual(len(ca.accounts), 1)
        again = self.client(ca, account_key_from_pem(account_key_pem(key)))
        self.assertEqual(self.successResultOf(again.register("ops@example.com", tos_accepted=True)), url)
        self.assertEqual(len(ca.accounts), 1)

    def test_find_account(self) -> None:
        """
        find_account gives None for an unknown key, the URL for a known one.
        """
        ca = FakeCA()
        client = self.client(ca)
        self.assertIsNone(self.successResultOf(client.find_account()))
        url = self.successResultOf(client.register(None, tos_accepted=True))
        self.assertEqual(self.successResultOf(client.find_account()), url)

    def test_terms_not_accepted(self) -> None:
        """
        When the CA has terms of service and tos_accepted is false, the
        error says which terms and which setting; nothing is sent.
        """
        ca = FakeCA()
        client = self.client(ca)
        error = self.failureResultOf(
            client.register("ops@example.com", tos_accepted=False), TermsOfServiceNotAccepted
        ).value
        self.assertEqual(
            str(error),
            "the CA's terms of service (https://ca.test/terms) must be accepted: set acme.tos_accepted: true",
        )
        self.assertEqual(ca.log, [("GET", "/dir")])

    def test_no_terms(self) -> None:
        """
        A CA without terms of service needs no acceptance.
        """
        client = self.client(FakeCA(terms_of_service=None))
        self.successResultOf(client.register("ops@example.com", tos_accepted=False))

    def test_eab(self) -> None:
        """
        When EAB is required, the given kid and HMAC key bind the account
        (the fake CA checks the HS256 MAC and the bound key).
        """
        ca = FakeCA(eab_keys={EAB_KID: EAB_HMAC})
        client = self.client(ca)
        self.successResultOf(client.register("ops@example.com", True, eab=(EAB_KID, EAB_HMAC)))
        self.assertEqual(len(ca.accounts), 1)

    def test_eab_missing(self) -> None:
        """
        A CA requiring EAB without credentials configured (and not
        ZeroSSL) is a clear error naming the settings.
        """
        ca = FakeCA(eab_keys={EAB_KID: EAB_HMAC})
        client = self.client(ca)
        error = self.failureResultOf(client.register("ops@example.com", True), ExternalAccountRequired).value
        self.assertIn("acme.eab_kid and acme.eab_hmac_key", str(error))
        self.assertEqual(ca.accounts, {})

    def test_eab_wrong_hmac(self) -> None:
        """
        A wrong HMAC key is refused by the CA: AcmeProblem unauthorized,
        logged at warn with its type, detail and status.
        """
        ca = FakeCA(eab_keys={EAB_KID: EAB_HMAC})
        client = self.client(ca)
        wrong = jose.b64encode(b"not the key").decode()
        problem = self.failureResultOf(
            client.register("ops@example.com", True, eab=(EAB_KID, wrong)), AcmeProblem
        ).value
        self.assertEqual((problem.type, problem.status), ("urn:ietf:params:acme:error:unauthorized", 401))
        [event] = [e for e in self.events if e["log_level"] == LogLevel.warn]
        self.assertEqual((event["problem_type"], event["status"]), (problem.type, 401))
        self.assertEqual(event["detail"], "EAB MAC does not verify")

    def test_eab_hmac_not_base64(self) -> None:
        """
        An HMAC key that is not base64url is a ValueError.
        """
        client = self.client(FakeCA())
        self.assertRaises(ValueError, eab_binding, client.account_key, "kid", "not base64!", client.directory)

    def test_zerossl_fetches_eab(self) -> None:
        """
        For ZeroSSL without configured EAB, credentials are fetched from the
        eab-credentials-email API with the account email, then used.
        """
        ca = FakeCA("https://acme.zerossl.com", directory_path="/v2/DV90", external_account_required=True)
        client = self.client(ca)
        url = self.successResultOf(
            client.register("ops@example.com", True, zerossl_eab_url="https://eab.fake.test/zerossl-eab")
        )
        self.assertEqual(len(ca.accounts), 1)
        self.assertIn(url, ca.accounts)
        self.assertIn(("POST", "/zerossl-eab"), ca.log)

    def test_zerossl_default_url(self) -> None:
        """
        The default endpoint is ZeroSSL's real one.
        """
        self.assertEqual(ZEROSSL_EAB_URL, "https://api.zerossl.com/acme/eab-credentials-email")
        ca = FakeCA("https://acme.zerossl.com", directory_path="/v2/DV90", external_account_required=True)
        client = self.client(ca)
        self.successResultOf(client.register("ops@example.com", True))
        self.assertIn(("POST", "/acme/eab-credentials-email"), ca.log)

    def test_zerossl_refuses(self) -> None:
        """
        When ZeroSSL's API answers success: false, the error says so.
        """
        ca = FakeCA("https://acme.zerossl.com", directory_path="/v2/DV90", external_account_required=True)
        client = self.client(ca)
        d = client.register("not-an-email", True, zerossl_eab_url="https://eab.fake.test/zerossl-eab")
        error = self.failureResultOf(d, EabCredentialsError).value
        self.assertIn("invalid_email", error.reason)
        self.assertEqual(ca.accounts, {})

    def test_zerossl_existing_account(self) -> None:
        """
        An existing ZeroSSL account is found without asking for new EAB
        credentials.
        """
        ca = FakeCA("https://acme.zerossl.com", directory_path="/v2/DV90", external_account_required=True)
        key = generate_account_key()
        self.successResultOf(self.client(ca, key).register("ops@example.com", True))
        del ca.log[:]
        self.successResultOf(self.client(ca, key).register("ops@example.com", True))
        self.assertNotIn(("POST", "/acme/eab-credentials-email"), ca.log)

    def test_is_zerossl(self) -> None:
        """
        ZeroSSL is recognised by its host name and subdomains only.
        """
        self.assertTrue(is_zerossl("https://acme.zerossl.com/v2/DV90"))
        self.assertTrue(is_zerossl("https://ZeroSSL.com./dir"))
        self.assertFalse(is_zerossl("https://notzerossl.com/dir"))
        self.assertFalse(is_zerossl("https://zerossl.com.evil.test/dir"))


class PebbleAccountTests(TestCase):
    """
    Tests for AcmeClient accounts against a real Pebble.
    """

    async def start(self, **options: Any) -> PebbleFixture:
        # No validation happens here: any port will do as httpPort.
        self.pebble = await PebbleFixture.start(self, free_port(), **options)
        self.pool = HTTPConnectionPool(reactor)
        self.addCleanup(self.pool.closeCachedConnections)
        return self.pebble

    async def client(self, key: jose.JWK | None = None) -> AcmeClient:
        http = make_http_client(reactor, self.pebble.ca_bundle, pool=self.pool)
        return await AcmeClient.from_directory(self.pebble.directory_url, http, reactor, key or generate_account_key())

    async def test_create_then_find(self) -> None:
        """
        An account is created, then found again for the same key with
        onlyReturnExisting; a new key has no account.
        """
        await self.start()
        key = generate_account_key()
        client = await self.client(key)
        self.assertTrue(client.terms_of_service)
        url = await client.register("ops@example.com", tos_accepted=True)
        self.assertTrue(url.startswith(self.pebble.directory_url.rsplit("/", 1)[0]))
        again = await self.client(key)
        self.assertEqual(await again.find_account(), url)
        self.assertEqual(await again.register("ops@example.com", tos_accepted=True), url)
        self.assertIsNone(await (await self.client()).find_account())

    async def test_rsa_account_key(self) -> None:
        """
        An RSA account key (RS256) works as well as the default EC one.
        """
        await self.start()
        client = await self.client(generate_account_key("rsa"))
        self.assertTrue(await client.register("ops@example.com", tos_accepted=True))

    async def test_terms_not_accepted(self) -> None:
        """
        Pebble has terms of service: tos_accepted false is refused.
        """
        await self.start()
        client = await self.client()
        with self.assertRaises(TermsOfServiceNotAccepted) as caught:
            await client.register("ops@example.com", tos_accepted=False)
        self.assertIn("data:text/plain", str(caught.exception))

    async def test_eab(self) -> None:
        """
        With EAB required: the right credentials create an account; none
        is a clear local error; a wrong HMAC key is refused by Pebble with
        an unauthorized problem.
        """
        await self.start(eab_keys={EAB_KID: EAB_HMAC})
        client = await self.client()
        self.assertTrue(client.external_account_required)
        self.assertTrue(await client.register("ops@example.com", True, eab=(EAB_KID, EAB_HMAC)))
        with self.assertRaises(ExternalAccountRequired):
            await (await self.client()).register("ops@example.com", True)
        wrong = jose.b64encode(b"x" * 32).decode()
        with self.assertRaises(AcmeProblem) as caught:
            await (await self.client()).register("ops@example.com", True, eab=(EAB_KID, wrong))
        self.assertEqual(caught.exception.type, "urn:ietf:params:acme:error:unauthorized")

    async def test_eab_unknown_kid(self) -> None:
        """
        An unknown EAB key id is refused by Pebble.
        """
        await self.start(eab_keys={EAB_KID: EAB_HMAC})
        with self.assertRaises(AcmeProblem) as caught:
            await (await self.client()).register("ops@example.com", True, eab=("kid-unknown", EAB_HMAC))
        self.assertEqual(caught.exception.type, "urn:ietf:params:acme:error:unauthorized")
