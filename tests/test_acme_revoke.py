"""
Tests for certificate revocation (RFC 8555 §7.6): AcmeClient.revoke and
DaemonAcmeIssuer.revoke against a real Pebble, which reports a
certificate's status on its management interface.
"""

from __future__ import annotations

import json

from acme import messages
from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import HTTPConnectionPool

from kongacme.acme.client import ALREADY_REVOKED, AcmeClient
from kongacme.acme.keys import generate_account_key, generate_private_key
from kongacme.acme.order import issue
from kongacme.acme.trust import make_http_client
from kongacme.config import parse_config
from kongacme.errors import AcmeProblem, AcmeTransportError
from kongacme.issuance.acme_issuer import DaemonAcmeIssuer
from kongacme.storage.memory import MemoryStorage
from kongacme.testing import TestCA
from kongacme.tls.certs import CertifiedKey
from kongacme.web.tokens import MemoryChallengeTokenStore
from tests.fakeca import FakeCA
from tests.pebble import PebbleFixture, start_http01_responder


class RevokeArgumentTests(SynchronousTestCase):
    """
    Tests for AcmeClient.revoke's checks before anything is sent.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.ca = FakeCA()
        d = AcmeClient.from_directory(self.ca.directory_url, StubTreq(self.ca), self.clock, generate_account_key())
        self.client = self.successResultOf(d)
        self.certificate = TestCA.create().issue(["a.test"]).leaf

    def test_bad_reason(self) -> None:
        """
        Reason codes RFC 5280 does not define (7, 11, negative, booleans)
        raise ValueError.
        """
        for reason in (7, 11, -1, True):
            self.assertRaises(ValueError, self.client.revoke, self.certificate, reason)

    def test_no_revoke_url(self) -> None:
        """
        A directory without revokeCert fails with AcmeTransportError
        naming the directory.
        """
        fields = self.client.directory.to_partial_json()
        fields.pop("revokeCert", None)
        self.client.directory = messages.Directory.from_json(fields)
        failure = self.failureResultOf(self.client.revoke(self.certificate), AcmeTransportError)
        self.assertIn("revokeCert", str(failure.value))


class PebbleRevokeTests(TestCase):
    """
    Tests for revocation against a real Pebble.
    """

    async def start(self) -> None:
        self.tokens = MemoryChallengeTokenStore(reactor)
        http_port = start_http01_responder(self, self.tokens)
        self.pebble = await PebbleFixture.start(self, http_port)
        pool = HTTPConnectionPool(reactor)
        self.addCleanup(pool.closeCachedConnections)
        self.http = make_http_client(reactor, self.pebble.ca_bundle, pool=pool)

    async def client(self) -> AcmeClient:
        client = await AcmeClient.from_directory(self.pebble.directory_url, self.http, reactor, generate_account_key())
        await client.register("ops@example.com", tos_accepted=True)
        return client

    async def status(self, certified: CertifiedKey) -> dict:
        """Pebble's record of the certificate (``Status``: Valid or Revoked)."""
        body = await self.pebble._management_get("/cert-status-by-serial/%x" % (certified.leaf.serial_number,))
        self.assertIsNotNone(body)
        return json.loads(body)

    async def test_revoke(self) -> None:
        """
        The ordering account revokes its certificate: Pebble reports it
        Revoked with the reason sent; revoking it again fails with the
        CA's alreadyRevoked problem.
        """
        await self.start()
        client = await self.client()
        certified = await issue(client, "revoke.demo.test", generate_private_key("ecc"), self.tokens)
        self.assertEqual((await self.status(certified))["Status"], "Valid")
        await client.revoke(certified.leaf, reason=4)
        status = await self.status(certified)
        self.assertEqual(status["Status"], "Revoked")
        self.assertEqual(status.get("Reason"), 4)
        try:
            await client.revoke(certified.leaf)
        except AcmeProblem as problem:
            self.assertEqual(problem.type, ALREADY_REVOKED)
        else:
            self.fail("a second revocation succeeded")

    async def test_other_account(self) -> None:
        """
        An account that neither ordered the certificate nor holds
        authorizations for its names is refused (unauthorized) and the
        certificate stays valid.
        """
        await self.start()
        owner = await self.client()
        certified = await issue(owner, "mine.demo.test", generate_private_key("ecc"), self.tokens)
        stranger = await self.client()
        try:
            await stranger.revoke(certified.leaf)
        except AcmeProblem as problem:
            self.assertEqual(problem.type, "urn:ietf:params:acme:error:unauthorized")
        else:
            self.fail("a stranger revoked the certificate")
        self.assertEqual((await self.status(certified))["Status"], "Valid")

    async def test_daemon_issuer(self) -> None:
        """
        DaemonAcmeIssuer.revoke uses the daemon's stored account (the one
        that ordered) and revokes with reason 0 by default.
        """
        await self.start()
        config = parse_config(
            {
                "acme": {
                    "account_email": "ops@example.com",
                    "api_uri": self.pebble.directory_url,
                    "tos_accepted": True,
                    "domains": ["*.demo.test"],
                    "cert_type": "ecc",
                },
                "issuance": {"ca_bundle": self.pebble.ca_bundle},
            },
            self.mktemp(),
        )
        storage = MemoryStorage(reactor)
        issuer = DaemonAcmeIssuer(config.acme, config.issuance, storage, self.tokens, reactor)
        self.addCleanup(issuer.close)
        certified = await issuer.issue("daemon.demo.test")
        await issuer.revoke(certified)
        status = await self.status(certified)
        self.assertEqual(status["Status"], "Revoked")
        self.assertIn(status.get("Reason"), (0, None))
