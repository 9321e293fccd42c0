"""
Tests for kongacme.web.admin_acme (POST /acme): the names it accepts, over
real sockets with the Admin API test world of
tests.test_web_admin_certificates, and end to end in a daemon issuing from
a real Pebble.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.trial.unittest import TestCase

from kongacme.issuance.admission import Admission
from kongacme.tls.fallback import FALLBACK_NAME
from kongacme.web.admin_certificates import describe
from tests import tlsclients
from tests.test_daemon_acme import AcmeDaemonMixin
from tests.test_web_admin_certificates import NOW, AdminWorld
from tests.test_web_support import get, listen

FORM = b"Content-Type: application/x-www-form-urlencoded\r\n"
UNDERSCORE_MESSAGE = (
    "host under_score.demo.test is not allowed: not a valid host name: '_' is not allowed in a "
    "certificate's names (letters, digits and hyphens only)"
)


class RecordingManager:
    """
    A CertificateManager for POST /acme that admits every valid name and
    "issues" by storing a test CA's certificate in the world, recording
    the hosts it was asked for.
    """

    def __init__(self, world: AdminWorld) -> None:
        self.world = world
        self.admission = Admission(allow_any_domain=True)
        self.obtained: list[str] = []

    def obtain(self, host: str, origin: str = "", force: bool = False) -> Deferred:
        self.obtained.append(host)
        return succeed(self.world.store(host, self.world.issue(host)))


class PostAcmeNamesTests(TestCase):
    """
    Tests for the host names POST /acme accepts.
    """

    def start(self) -> int:
        self.world = AdminWorld()
        self.manager = RecordingManager(self.world)
        self.world.manager = self.manager
        return listen(self, self.world.site)

    @inlineCallbacks
    def test_trailing_dot(self) -> Any:
        """
        host=Dot.Demo.Test. orders and stores under dot.demo.test (the name
        handshakes look up), answers with that name, and GET with or
        without the dot finds it.
        """
        port = self.start()
        response = yield get(port, b"/acme", method=b"POST", body=b"host=Dot.Demo.Test.", headers=FORM)
        self.assertEqual((response.status, json.loads(response.body)),
                         (201, {"message": "certificate for host dot.demo.test is created"}))
        self.assertEqual(self.manager.obtained, ["dot.demo.test"])
        stored = yield self.world.storage.list("")
        self.assertTrue(stored)
        self.assertEqual([key for key in stored if key.endswith(".")], [])
        for path in (b"/acme/certificates/dot.demo.test.", b"/acme/certificates/dot.demo.test"):
            response = yield get(port, path)
            self.assertEqual(response.status, 200, path)
            self.assertEqual(json.loads(response.body)["data"]["host"], "dot.demo.test")

    @inlineCallbacks
    def test_underscore_refused_before_ordering(self) -> Any:
        """
        A name with an underscore label answers 400 in Kong's shape and
        starts no order (the CA would refuse it and count the attempt),
        also as JSON and for the sanity check.
        """
        port = self.start()
        response = yield get(port, b"/acme", method=b"POST", body=b"host=under_score.demo.test", headers=FORM)
        self.assertEqual((response.status, json.loads(response.body)), (400, {"message": UNDERSCORE_MESSAGE}))
        self.assertEqual(response.header(b"content-type"), b"application/json")
        response = yield get(port, b"/acme", method=b"POST", body=b'{"host": "Under_Score.demo.test."}',
                             headers=b"Content-Type: application/json\r\n")
        self.assertEqual((response.status, json.loads(response.body)), (400, {"message": UNDERSCORE_MESSAGE}))
        response = yield get(port, b"/acme", method=b"POST",
                             body=b"host=under_score.demo.test&test_http_challenge_flow=true", headers=FORM)
        self.assertEqual(response.status, 400)
        for bad in (b"a..b.test", b"-a.test", b"a.test..", b"*.de_mo.test"):
            response = yield get(port, b"/acme", method=b"POST", body=b"host=" + bad, headers=FORM)
            self.assertEqual(response.status, 400, bad)
            self.assertIn("is not allowed: not a valid host name", json.loads(response.body)["message"])
        # A well-formed wildcard without issuance.wildcard: refused, saying why.
        response = yield get(port, b"/acme", method=b"POST", body=b"host=*.demo.test", headers=FORM)
        self.assertEqual(response.status, 400)
        self.assertIn("wildcard certificates need issuance.wildcard: true", json.loads(response.body)["message"])
        self.assertEqual(self.manager.obtained, [])

    @inlineCallbacks
    def test_get_trailing_dot_matches_stored(self) -> Any:
        """
        GET /acme/certificates/<name>. answers the certificate stored for
        <name> (it was a 400).
        """
        port = self.start()
        certified = self.world.store("a.demo.test", self.world.issue("a.demo.test"))
        response = yield get(port, b"/acme/certificates/A.Demo.Test.")
        self.assertEqual((response.status, json.loads(response.body)),
                         (200, {"data": describe("a.demo.test", certified, NOW)}))


class PostAcmeDaemonTests(AcmeDaemonMixin, TestCase):
    """
    Tests for POST /acme names in a running daemon against Pebble.
    """

    @inlineCallbacks
    def test_dotted_and_underscore_names(self) -> Any:
        """
        POST /acme with host=dot.example.test. issues a certificate that a
        handshake for dot.example.test is served; host=under_score.example.test
        answers 400 without an order, and a handshake with that SNI gets the
        fallback without starting one.
        """
        yield self.start()
        code, body = yield self.admin("-d", "host=dot.example.test.")
        self.assertEqual((code, body), (201, {"message": "certificate for host dot.example.test is created"}))
        served = yield tlsclients.handshake(self.tls_port, "dot.example.test", self.verified(), payload=b"")
        self.assertEqual(served["names"], ["dot.example.test"])
        code, body = yield self.admin("-d", "host=under_score.example.test")
        self.assertEqual(code, 400)
        self.assertEqual(body, {"message": UNDERSCORE_MESSAGE.replace("demo", "example")})
        served = yield tlsclients.handshake(self.tls_port, "under_score.example.test", tlsclients.client_context(),
                                            payload=b"")
        self.assertEqual(served["names"], [FALLBACK_NAME])
        self.assertEqual(self.orders("under_score.example.test"), 0)
        self.assertEqual(self.orders("dot.example.test."), 0)
