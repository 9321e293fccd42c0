"""
Tests for kongacme.web.admin_certificates (PATCH /acme and the
/acme/certificates routes), over real sockets on 127.0.0.1 with in-memory
storage and fakes of the renewal service and the issuer. The fakes are
used by tests.test_web_openapi and tests.test_cli too.
"""

from __future__ import annotations

import datetime
import json
from typing import Any, Optional

from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail, inlineCallbacks, succeed
from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from kongacme.errors import AcmeProblem, IssuanceError, NotAdmitted
from kongacme.issuance.issuers import IssuerLedger
from kongacme.renewal.state import RenewalState
from kongacme.storage import keys
from kongacme.storage.memory import MemoryStorage
from kongacme.testing import TestCA
from kongacme.tls.cache import CertificateCache
from kongacme.tls.certs import CertifiedKey
from kongacme.web.admin import make_admin_factory
from kongacme.web.admin_acme import AcmeAdmin
from kongacme.web.admin_acme import install as install_acme_admin
from kongacme.web.admin_certificates import (
    CertificatesAdmin,
    RequestError,
    describe,
    install,
    parse_host,
    serial_hex,
)
from kongacme.web.openapi import install as install_openapi
from tests.test_web_support import get, listen

#: "Now" for these tests: 2025-10-09 08:53:20 UTC.
NOW = 1_760_000_000.0
NOW_DT = datetime.datetime.fromtimestamp(NOW, datetime.timezone.utc)


class FakeRenewal:
    """
    The RenewalService API the Admin API uses: tracked hosts' states, a
    pass (``pass_result``: a value, an exception or a Deferred to fire),
    one host (``renew_result`` likewise), and forget.
    """

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self.tracked: dict[str, RenewalState] = {}
        self.passes = 0
        self.pass_result: Any = {"checked": 0, "renewed": [], "failed": {}}
        self.renewals: list[str] = []
        self.renew_result: Any = None
        self.forgotten: list[str] = []

    def states(self) -> list[RenewalState]:
        return [self.tracked[host] for host in sorted(self.tracked)]

    def state(self, host: str) -> Optional[RenewalState]:
        return self.tracked.get(host)

    def renew_all(self) -> Deferred:
        self.passes += 1
        return _result(self.pass_result)

    def renew(self, host: str) -> Deferred:
        self.renewals.append(host)
        return _result(self.renew_result)

    def forget(self, host: str) -> None:
        self.forgotten.append(host)
        self.tracked.pop(host, None)


def _result(value: Any) -> Deferred:
    if isinstance(value, Deferred):
        return value
    if isinstance(value, Exception):
        return fail(value)
    return succeed(value)


class FakeRevoker:
    """The issuer's revoke(certified, reason): recorded; ``fail_with`` makes it fail."""

    def __init__(self) -> None:
        self.revoked: list[tuple[CertifiedKey, int]] = []
        self.fail_with: Optional[Exception] = None

    def revoke(self, certified: CertifiedKey, reason: int = 0) -> Deferred:
        if self.fail_with is not None:
            return fail(self.fail_with)
        self.revoked.append((certified, reason))
        return succeed(None)


class FakeAdmission:
    """Admits nothing."""

    def reason(self, host: str) -> str:
        return "host is not included in plugin config.domains"


class FakeManager:
    """A CertificateManager for POST /acme that admits nothing."""

    admission = FakeAdmission()

    def obtain(self, host: str, origin: str = "", force: bool = False) -> Deferred:
        return fail(NotAdmitted(host, "host %s is not included in plugin config.domains" % (host,)))


class BrokenStorage:
    """Storage whose every call fails (an outage)."""

    def _fail(self, *args: Any) -> Deferred:
        return fail(ConnectionRefusedError("storage down"))

    get = set = add = delete = list = _fail


class AdminWorld:
    """
    An Admin site with every route installed over in-memory storage, a
    certificate cache, a fake renewal service and a fake issuer; ``clock``
    says "now".
    """

    def __init__(self, token: Optional[str] = None, configured: bool = True) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.ca = TestCA.create("kongacme admin test CA")
        self.storage: Any = MemoryStorage(self.clock) if configured else None
        self.cache = CertificateCache(self.ca.issue(["fallback.invalid"], not_before=NOW_DT))
        self.static_names: set[str] = set()
        self.renewal: Any = FakeRenewal(self.clock) if configured else None
        self.issuer: Any = FakeRevoker() if configured else None
        self.manager: Any = FakeManager() if configured else None
        self.site = make_admin_factory(lambda: {"version": "test"}, token, reactor=reactor)
        install_acme_admin(self.site, AcmeAdmin(lambda: self.manager, reactor, challenge_port=1))
        self.admin = CertificatesAdmin(
            lambda: self.renewal,
            lambda: self.storage,
            lambda: self.cache,
            lambda: self.static_names,
            lambda: self.issuer,
            self.clock,
        )
        install(self.site, self.admin)
        install_openapi(self.site)

    def store(self, host: str, certified: CertifiedKey) -> CertifiedKey:
        """Put ``certified`` in storage (and the cache) under ``host``, as an order would."""
        self.storage.set(keys.cert_key(host), keys.encode_cert_key(certified))
        self.storage.set(keys.renew_config(host), keys.encode_renew_config(host, NOW + 90 * 86400))
        self.cache.put(certified, [host])
        return certified

    def issue(self, host: str, days_ago: float = 1, days: int = 90, key_type: str = "ecc") -> CertifiedKey:
        start = NOW_DT - datetime.timedelta(days=days_ago)
        return self.ca.issue([host], key_type=key_type, not_before=start, days=days)


def capture_logs(test: Any) -> list[dict]:
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    test.addCleanup(globalLogPublisher.removeObserver, events.append)
    return events


class CertificatesTestMixin:
    def start(self, token: Optional[str] = None, configured: bool = True) -> int:
        self.world = AdminWorld(token, configured)
        return listen(self, self.world.site)

    def assertJSON(self, response: Any, status: int, body: Any = None) -> Any:
        self.assertEqual(response.status, status, response.body)
        self.assertEqual(response.header(b"content-type"), b"application/json")
        parsed = json.loads(response.body)
        if body is not None:
            self.assertEqual(parsed, body)
        return parsed


class ListTests(CertificatesTestMixin, TestCase):
    """
    Tests for GET /acme/certificates.
    """

    @inlineCallbacks
    def test_list(self) -> Any:
        """
        Every stored certificate in Kong's format, sorted by host, with
        kongacme's renewal state (null for an untracked host); a corrupt
        value is skipped with a warning.
        """
        port = self.start()
        world = self.world
        ecc = world.store("b.example.test", world.issue("b.example.test"))
        rsa = world.store("a.example.test", world.issue("a.example.test", days_ago=100, key_type="rsa"))
        world.storage.set(keys.cert_key("corrupt.example.test"), b'{"key": "nope", "cert": "nope"}')
        world.renewal.tracked["b.example.test"] = RenewalState(
            "b.example.test", not_after=NOW + 89 * 86400, last_error="boom", failures=2
        )
        events = capture_logs(self)
        response = yield get(port, b"/acme/certificates")
        data = self.assertJSON(response, 200)["data"]
        self.assertEqual([entry["host"] for entry in data], ["a.example.test", "b.example.test"])
        a, b = data
        self.assertEqual(
            b,
            {
                "digest": ecc.fingerprint,
                "host": "b.example.test",
                "issuer_cn": "kongacme admin test CA",
                "not_before": "2025-10-08 08:53:20",
                "not_after": "2026-01-06 08:53:20",
                "valid": True,
                "serial_number": serial_hex(ecc.leaf.serial_number),
                "pubkey_type": "id-ecPublicKey",
                "renewal": world.renewal.tracked["b.example.test"].to_json(NOW),
                "acme_issuer": None,
            },
        )
        self.assertEqual(b["renewal"]["last_error"], "boom")
        self.assertEqual((a["valid"], a["pubkey_type"], a["renewal"]), (False, "rsaEncryption", None))
        self.assertEqual(a["digest"], rsa.fingerprint)
        warnings = [e for e in events if e.get("key") == keys.cert_key("corrupt.example.test")]
        self.assertEqual(len(warnings), 1)
        self.assertEqual(warnings[0]["log_level"], LogLevel.warn)

    @inlineCallbacks
    def test_acme_issuer(self) -> Any:
        """
        acme_issuer: the CA the issuer chain recorded for the certificate
        (in storage, so other nodes and later runs see it; a record of an
        older certificate does not count).
        """
        port = self.start()
        world = self.world
        world.issuer.ledger = IssuerLedger(world.clock)
        fresh = world.store("a.example.test", world.issue("a.example.test"))
        world.store("b.example.test", world.issue("b.example.test"))
        for host, fingerprint in (("a.example.test", fresh.fingerprint), ("b.example.test", "AA:BB")):
            world.storage.set(
                keys.issued_by(host),
                json.dumps({"directory": "https://two.test/dir", "fallback": True, "fingerprint": fingerprint}).encode(),
            )
        response = yield get(port, b"/acme/certificates")
        data = self.assertJSON(response, 200)["data"]
        self.assertEqual(
            [entry["acme_issuer"] for entry in data], [{"directory": "https://two.test/dir", "fallback": True}, None]
        )
        response = yield get(port, b"/acme/certificates/a.example.test")
        self.assertEqual(
            self.assertJSON(response, 200)["data"]["acme_issuer"], {"directory": "https://two.test/dir", "fallback": True}
        )

    @inlineCallbacks
    def test_invalid_only(self) -> Any:
        """
        invalid_only keeps the certificates not valid now (expired or not
        yet valid); 0/false/no/off mean all; a bare ?invalid_only is true.
        """
        port = self.start()
        world = self.world
        world.store("ok.example.test", world.issue("ok.example.test"))
        world.store("old.example.test", world.issue("old.example.test", days_ago=91))
        world.store("future.example.test", world.issue("future.example.test", days_ago=-1))
        for query, hosts in [
            (b"?invalid_only=1", ["future.example.test", "old.example.test"]),
            (b"?invalid_only=true", ["future.example.test", "old.example.test"]),
            (b"?invalid_only", ["future.example.test", "old.example.test"]),
            (b"?invalid_only=0", ["future.example.test", "ok.example.test", "old.example.test"]),
            (b"?invalid_only=false", ["future.example.test", "ok.example.test", "old.example.test"]),
            (b"", ["future.example.test", "ok.example.test", "old.example.test"]),
        ]:
            response = yield get(port, b"/acme/certificates" + query)
            data = self.assertJSON(response, 200)["data"]
            self.assertEqual([entry["host"] for entry in data], hosts, query)

    @inlineCallbacks
    def test_valid_follows_the_clock(self) -> Any:
        """
        valid is computed from the injected clock: the same certificate is
        invalid once the clock passes not_after.
        """
        port = self.start()
        self.world.store("a.example.test", self.world.issue("a.example.test", days=2))
        response = yield get(port, b"/acme/certificates")
        self.assertTrue(self.assertJSON(response, 200)["data"][0]["valid"])
        self.world.clock.advance(2 * 86400)
        response = yield get(port, b"/acme/certificates")
        self.assertFalse(self.assertJSON(response, 200)["data"][0]["valid"])

    @inlineCallbacks
    def test_empty(self) -> Any:
        """
        Nothing stored answers 200 {"data": []}.
        """
        port = self.start()
        response = yield get(port, b"/acme/certificates")
        self.assertJSON(response, 200, {"data": []})

    @inlineCallbacks
    def test_storage_down(self) -> Any:
        """
        A storage outage answers 503 with the reason, not a 500.
        """
        port = self.start()
        self.world.storage = BrokenStorage()
        for method, path in [(b"GET", b"/acme/certificates"), (b"GET", b"/acme/certificates/a.test"),
                             (b"DELETE", b"/acme/certificates/a.test")]:
            response = yield get(port, path, method=method)
            body = self.assertJSON(response, 503)
            self.assertIn("storage down", body["message"])


class OneTests(CertificatesTestMixin, TestCase):
    """
    Tests for GET /acme/certificates/{host}.
    """

    @inlineCallbacks
    def test_found(self) -> Any:
        """
        A stored host answers 200 {"data": {...}}, the name matched
        case-insensitively.
        """
        port = self.start()
        certified = self.world.store("a.example.test", self.world.issue("a.example.test"))
        response = yield get(port, b"/acme/certificates/A.Example.TEST")
        self.assertJSON(response, 200, {"data": describe("a.example.test", certified, NOW)})

    @inlineCallbacks
    def test_trailing_dot(self) -> Any:
        """
        A fully qualified name with its trailing dot finds the host stored
        without it (it answered 400 before).
        """
        port = self.start()
        certified = self.world.store("dot.demo.test", self.world.issue("dot.demo.test"))
        response = yield get(port, b"/acme/certificates/dot.demo.test.")
        self.assertJSON(response, 200, {"data": describe("dot.demo.test", certified, NOW)})

    @inlineCallbacks
    def test_not_found(self) -> Any:
        """
        An absent host answers Kong's 404; a corrupt one the same with a
        detail.
        """
        port = self.start()
        response = yield get(port, b"/acme/certificates/a.example.test")
        self.assertJSON(response, 404, {"message": "Certificate for host a.example.test not found in storage"})
        self.world.storage.set(keys.cert_key("c.example.test"), b"garbage")
        capture_logs(self)
        response = yield get(port, b"/acme/certificates/c.example.test")
        body = self.assertJSON(response, 404)
        self.assertEqual(body["message"], "Certificate for host c.example.test not found in storage")
        self.assertIn("unreadable", body["detail"])

    @inlineCallbacks
    def test_hostile_hosts(self) -> Any:
        """
        Overlong names, percent-encoding (slashes, NUL, dots), non-ASCII,
        ports, empty labels and other punctuation answer 400 JSON; nothing
        reaches storage.
        """
        port = self.start()
        world = self.world
        world.storage = BrokenStorage()  # any storage access would answer 503
        for raw in [b"a" * 254, (b"a" * 63 + b".") * 4 + b"a", b"a%2Fb", b"a%00b", b"%2e%2e", b"a%20b",
                    b"a.test:443", b"a..test", b".a.test", b"a.test..", b"-a.test",
                    b"a_b$.test", b"a*.test", b"*", b"a.*.test", b"a" * 64 + b".test"]:
            for method in (b"GET", b"DELETE"):
                response = yield get(port, b"/acme/certificates/" + raw, method=method)
                body = self.assertJSON(response, 400)
                self.assertTrue(body["message"].startswith(("invalid host", "port is not allowed")), raw)
        response = yield get(port, b"/acme/certificates/a/b")
        self.assertJSON(response, 404, {"message": "Not found"})
        # Non-ASCII bytes in the request line are refused by Twisted's
        # parser before routing (a bare 400); parse_host refuses them too.
        response = yield get(port, b"/acme/certificates/\xc3\xa9.test")
        self.assertEqual(response.status, 400)


class ParseHostTests(SynchronousTestCase):
    """
    Tests for parse_host.
    """

    def test_accepted(self) -> None:
        """
        DNS names (underscores, digits, a leftmost wildcard, 253
        characters, one trailing dot) are accepted, lower-cased and without
        the trailing dot.
        """
        longest = ((b"a" * 63 + b".") * 3 + b"a" * 61)
        self.assertEqual(len(longest), 253)
        for raw, expected in [(b"Example.COM", "example.com"), (b"*.example.com", "*.example.com"),
                              (b"_acme.x-1.test", "_acme.x-1.test"), (b"127.0.0.1", "127.0.0.1"),
                              (longest, longest.decode()), (longest + b".", longest.decode()),
                              (b"Dot.Demo.Test.", "dot.demo.test"), (b"*.example.com.", "*.example.com")]:
            self.assertEqual(parse_host(raw), expected)

    def test_control_characters(self) -> None:
        """
        Control characters are refused and shown escaped in the message;
        non-ASCII is refused.
        """
        error = self.assertRaises(RequestError, parse_host, b"a\r\nb")
        self.assertEqual((error.code, error.message), (400, "invalid host: a\\r\\nb"))
        error = self.assertRaises(RequestError, parse_host, "\u00e9.test".encode("utf-8"))
        self.assertEqual((error.code, error.message), (400, "invalid host: not ASCII"))


class DeleteTests(CertificatesTestMixin, TestCase):
    """
    Tests for DELETE /acme/certificates/{host}.
    """

    @inlineCallbacks
    def test_delete(self) -> Any:
        """
        The certificate and renew_config keys leave storage, the host
        leaves the cache and the renewal service; nothing is revoked.
        """
        port = self.start()
        world = self.world
        world.store("a.example.test", world.issue("a.example.test"))
        world.store("b.example.test", world.issue("b.example.test"))
        world.renewal.tracked["a.example.test"] = RenewalState("a.example.test")
        response = yield get(port, b"/acme/certificates/a.example.test", method=b"DELETE")
        self.assertJSON(response, 200, {"message": "certificate for host a.example.test is deleted"})
        stored = yield world.storage.list("")
        self.assertEqual(sorted(stored), [keys.cert_key("b.example.test"), keys.renew_config("b.example.test")])
        self.assertEqual(world.cache.names(), ["b.example.test"])
        self.assertEqual(world.renewal.forgotten, ["a.example.test"])
        self.assertEqual(world.issuer.revoked, [])
        response = yield get(port, b"/acme/certificates/a.example.test", method=b"DELETE")
        self.assertJSON(response, 404, {"message": "Certificate for host a.example.test not found in storage"})

    @inlineCallbacks
    def test_static_name_stays(self) -> Any:
        """
        A host also served by a static certificate keeps its cache entry.
        """
        port = self.start()
        world = self.world
        world.store("a.example.test", world.issue("a.example.test"))
        static = world.issue("a.example.test")
        world.cache.put(static, ["a.example.test"])
        world.static_names.add("a.example.test")
        response = yield get(port, b"/acme/certificates/a.example.test", method=b"DELETE")
        self.assertJSON(response, 200)
        self.assertIs(world.cache.get("a.example.test"), static)
        self.assertIsNone((yield world.storage.get(keys.cert_key("a.example.test"))))

    @inlineCallbacks
    def test_revoke(self) -> Any:
        """
        ?revoke=1, or a JSON or form body with revoke, revokes the stored
        certificate (reason 0) before deleting it.
        """
        port = self.start()
        world = self.world
        requests = [
            (b"?revoke=1", b"", b""),
            (b"", b'{"revoke": true}', b"Content-Type: application/json\r\n"),
            (b"", b"revoke=true", b"Content-Type: application/x-www-form-urlencoded\r\n"),
        ]
        for index, (query, body, headers) in enumerate(requests):
            host = "h%d.example.test" % (index,)
            certified = world.store(host, world.issue(host))
            response = yield get(port, b"/acme/certificates/" + host.encode() + query, method=b"DELETE",
                                 body=body, headers=headers)
            self.assertJSON(response, 200, {"message": "certificate for host %s is revoked and deleted" % (host,)})
            self.assertEqual(world.issuer.revoked[-1][0].fingerprint, certified.fingerprint)
            self.assertEqual(world.issuer.revoked[-1][1], 0)
        self.assertEqual(len(world.issuer.revoked), 3)
        self.assertEqual((yield world.storage.list("")), [])

    @inlineCallbacks
    def test_no_revoke(self) -> Any:
        """
        revoke=0 or {"revoke": false} deletes without revoking.
        """
        port = self.start()
        world = self.world
        world.store("a.example.test", world.issue("a.example.test"))
        response = yield get(port, b"/acme/certificates/a.example.test", method=b"DELETE",
                             body=b'{"revoke": false}', headers=b"Content-Type: application/json\r\n")
        self.assertJSON(response, 200, {"message": "certificate for host a.example.test is deleted"})
        self.assertEqual(world.issuer.revoked, [])

    @inlineCallbacks
    def test_revoke_fails(self) -> Any:
        """
        When the CA refuses, 502 with its problem, and nothing is deleted.
        """
        port = self.start()
        world = self.world
        world.store("a.example.test", world.issue("a.example.test"))
        world.issuer.fail_with = AcmeProblem("urn:ietf:params:acme:error:unauthorized", "not yours", 403)
        capture_logs(self)
        response = yield get(port, b"/acme/certificates/a.example.test?revoke=1", method=b"DELETE")
        body = self.assertJSON(response, 502)
        self.assertIn("failed to revoke the certificate for host a.example.test", body["message"])
        self.assertEqual(body["problem"]["type"], "urn:ietf:params:acme:error:unauthorized")
        self.assertIsNotNone((yield world.storage.get(keys.cert_key("a.example.test"))))
        self.assertEqual(world.cache.names(), ["a.example.test"])
        self.assertEqual(world.renewal.forgotten, [])

    @inlineCallbacks
    def test_revoke_corrupt(self) -> Any:
        """
        Revoking an unreadable stored value answers 409; deleting it
        without revoke works.
        """
        port = self.start()
        world = self.world
        world.storage.set(keys.cert_key("a.example.test"), b"garbage")
        capture_logs(self)
        response = yield get(port, b"/acme/certificates/a.example.test?revoke=1", method=b"DELETE")
        self.assertIn("unreadable", self.assertJSON(response, 409)["message"])
        response = yield get(port, b"/acme/certificates/a.example.test", method=b"DELETE")
        self.assertJSON(response, 200)
        self.assertEqual((yield world.storage.list("")), [])

    @inlineCallbacks
    def test_unknown_field(self) -> Any:
        """
        A body field other than revoke, or a body that is not a JSON
        object, answers 400 and deletes nothing.
        """
        port = self.start()
        world = self.world
        world.store("a.example.test", world.issue("a.example.test"))
        json_type = b"Content-Type: application/json\r\n"
        response = yield get(port, b"/acme/certificates/a.example.test", method=b"DELETE",
                             body=b'{"revoke": false, "force": true}', headers=json_type)
        self.assertJSON(response, 400, {"message": 'unknown field in request body: "force"'})
        response = yield get(port, b"/acme/certificates/a.example.test", method=b"DELETE",
                             body=b"[true]", headers=json_type)
        self.assertJSON(response, 400, {"message": "request body must be a JSON object"})
        self.assertEqual(len((yield world.storage.list(""))), 2)


class PatchTests(CertificatesTestMixin, TestCase):
    """
    Tests for PATCH /acme.
    """

    @inlineCallbacks
    def test_started(self) -> Any:
        """
        PATCH /acme starts a pass and answers 202 at once, before the pass
        ends; the pass's summary is logged.
        """
        port = self.start()
        world = self.world
        world.renewal.pass_result = Deferred()
        events = capture_logs(self)
        response = yield get(port, b"/acme", method=b"PATCH")
        self.assertJSON(response, 202, {"message": "Renewal process started successfully"})
        self.assertEqual(world.renewal.passes, 1)
        world.renewal.pass_result.callback({"checked": 3, "renewed": ["a"], "failed": {"b": "boom"}})
        [summary] = [e for e in events if "summary" in e]
        self.assertEqual((summary["checked"], summary["renewed"], summary["failed"]), (3, 1, 1))

    @inlineCallbacks
    def test_pass_fails(self) -> Any:
        """
        A pass that fails in the background is logged; the answer was 202.
        """
        port = self.start()
        self.world.renewal.pass_result = RuntimeError("pass broke")
        response = yield get(port, b"/acme", method=b"PATCH")
        self.assertJSON(response, 202)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    @inlineCallbacks
    def test_body_field(self) -> Any:
        """
        PATCH /acme reads no field: any body field answers 400.
        """
        port = self.start()
        response = yield get(port, b"/acme", method=b"PATCH", body=b'{"host": "a"}',
                             headers=b"Content-Type: application/json\r\n")
        self.assertJSON(response, 400, {"message": 'unknown field in request body: "host"'})
        self.assertEqual(self.world.renewal.passes, 0)


class RenewOneTests(CertificatesTestMixin, TestCase):
    """
    Tests for POST /acme/certificates/{host}/renew.
    """

    @inlineCallbacks
    def test_renewed(self) -> Any:
        """
        A managed host is renewed through the renewal service: 200 with the
        new certificate's entry.
        """
        port = self.start()
        world = self.world
        world.renewal.tracked["a.example.test"] = RenewalState("a.example.test")
        world.renewal.renew_result = world.issue("a.example.test", days_ago=0)
        response = yield get(port, b"/acme/certificates/a.example.test/renew", method=b"POST")
        body = self.assertJSON(response, 200)
        self.assertEqual(body["message"], "certificate for host a.example.test is renewed")
        self.assertEqual(body["data"]["digest"], world.renewal.renew_result.fingerprint)
        self.assertEqual(world.renewal.renewals, ["a.example.test"])

    @inlineCallbacks
    def test_failures(self) -> Any:
        """
        Not managed → 404; the order failing → POST /acme's answers (400
        not admitted, 500 failed to update certificate).
        """
        port = self.start()
        world = self.world
        response = yield get(port, b"/acme/certificates/a.example.test/renew", method=b"POST")
        self.assertJSON(response, 404, {"message": "host a.example.test is not managed by the renewal service"})
        world.renewal.tracked["a.example.test"] = RenewalState("a.example.test")
        world.renewal.renew_result = NotAdmitted("a.example.test", "host is not included")
        response = yield get(port, b"/acme/certificates/a.example.test/renew", method=b"POST")
        self.assertJSON(response, 400, {"message": "host is not included"})
        world.renewal.renew_result = IssuanceError("a.example.test", "CA said no")
        response = yield get(port, b"/acme/certificates/a.example.test/renew", method=b"POST")
        self.assertJSON(response, 500, {"message": "failed to update certificate: CA said no"})


class NotConfiguredTests(CertificatesTestMixin, TestCase):
    """
    Tests for the routes without an acme section.
    """

    @inlineCallbacks
    def test_not_configured(self) -> Any:
        """
        Every ACME route answers 404 "ACME is not configured: …".
        """
        port = self.start(configured=False)
        message = {"message": "ACME is not configured: add an acme section to the configuration"}
        for method, path in [(b"PATCH", b"/acme"), (b"GET", b"/acme/certificates"),
                             (b"GET", b"/acme/certificates/a.test"), (b"DELETE", b"/acme/certificates/a.test"),
                             (b"POST", b"/acme/certificates/a.test/renew"), (b"POST", b"/acme?host=a.test")]:
            response = yield get(port, path, method=method)
            self.assertJSON(response, 404, message)


class TokenTests(CertificatesTestMixin, TestCase):
    """
    Tests for the bearer token on every route.
    """

    ROUTES = [(b"GET", b"/health"), (b"GET", b"/status"), (b"POST", b"/acme?host=a.test"), (b"PATCH", b"/acme"),
              (b"GET", b"/acme/certificates"), (b"GET", b"/acme/certificates/a.test"),
              (b"POST", b"/acme/certificates/a.test/renew"), (b"DELETE", b"/acme/certificates/a.test"),
              (b"GET", b"/openapi.json"), (b"PUT", b"/acme/certificates/a.test")]

    @inlineCallbacks
    def test_required(self) -> Any:
        """
        With admin.token set, every route (and a wrong method on one)
        answers 401 without it and does nothing.
        """
        port = self.start(token="s3cret")
        self.world.store("a.test", self.world.issue("a.test"))
        for method, path in self.ROUTES:
            response = yield get(port, path, method=method, headers=b"Authorization: Bearer nope\r\n")
            self.assertJSON(response, 401, {"message": "Unauthorized"})
        self.assertEqual((self.world.renewal.passes, self.world.renewal.renewals), (0, []))
        self.assertEqual(len((yield self.world.storage.list(""))), 2)

    @inlineCallbacks
    def test_accepted(self) -> Any:
        """
        With the token, every route answers as without authentication.
        """
        port = self.start(token="s3cret")
        self.world.store("a.test", self.world.issue("a.test"))
        self.world.renewal.tracked["a.test"] = RenewalState("a.test")
        self.world.renewal.renew_result = self.world.issue("a.test")
        expected = [200, 200, 400, 202, 200, 200, 200, 200, 200, 405]
        for (method, path), code in zip(self.ROUTES, expected):
            response = yield get(port, path, method=method, headers=b"Authorization: Bearer s3cret\r\n")
            self.assertEqual(response.status, code, (method, path, response.body))
