"""
Tests for kongacme.acme.ari (ACME Renewal Information, RFC 9773) against a
small fake ARI endpoint: Pebble 2.4 has no renewalInfo.
"""

import datetime
import json

from acme.client import _renewal_info_path_component
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource

from kongacme.acme import AcmeClient, generate_account_key
from kongacme.acme.ari import (
    DEFAULT_RETRY_AFTER,
    MIN_RETRY_AFTER,
    cert_id,
    fetch_renewal_info,
    parse_renewal_info,
)
from kongacme.errors import AcmeTransportError
from kongacme.testing import TestCA

BASE = "http://ca.test"


def _cert(aki: bytes | None, serial: int) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ari.test")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(datetime.datetime(2026, 1, 1))
        .not_valid_after(datetime.datetime(2026, 4, 1))
    )
    if aki is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier(aki, None, None), critical=False
        )
    return builder.sign(key, hashes.SHA256())


class CertIdTests(SynchronousTestCase):
    def test_rfc_example(self):
        """The identifier of RFC 9773 §4.1's example certificate."""
        aki = bytes.fromhex("69885B6B87464041E1B37B847BA0AE2CDE01C8D4")
        self.assertEqual(cert_id(_cert(aki, 0x87654321)), "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE")

    def test_matches_certbot(self):
        """Same identifiers as the acme library's own helper, for many serials."""
        ca = TestCA.create()
        for _ in range(20):
            leaf = ca.issue(["x.test"]).leaf
            self.assertEqual(cert_id(leaf), _renewal_info_path_component(leaf))

    def test_no_aki(self):
        """A certificate without an AKI cannot be named."""
        self.assertRaises(ValueError, cert_id, _cert(None, 5))


class ParseTests(SynchronousTestCase):
    def window(self, start="2026-03-01T00:00:00Z", end="2026-03-03T00:00:00Z", **extra):
        return {"suggestedWindow": {"start": start, "end": end}, **extra}

    def test_window(self):
        """Start, end, Retry-After and the explanation URL are read."""
        parsed = parse_renewal_info(self.window(explanationURL="https://ca.test/why"), "u", 7200.0)
        self.assertEqual(parsed.start, datetime.datetime(2026, 3, 1, tzinfo=datetime.timezone.utc).timestamp())
        self.assertEqual(parsed.end - parsed.start, 2 * 86400)
        self.assertEqual(parsed.retry_after, 7200.0)
        self.assertEqual(parsed.explanation_url, "https://ca.test/why")

    def test_offsets_and_fractions(self):
        """RFC 3339 offsets and fractional seconds are accepted."""
        parsed = parse_renewal_info(self.window("2026-03-01T01:00:00.5+01:00", "2026-03-02T00:00:00z"), "u", None)
        self.assertEqual(parsed.start, datetime.datetime(2026, 3, 1, 0, 0, 0, 500000,
                                                         tzinfo=datetime.timezone.utc).timestamp())

    def test_default_and_clamped_retry_after(self):
        """No Retry-After: six hours; absurdly short ones are clamped."""
        self.assertEqual(parse_renewal_info(self.window(), "u", None).retry_after, DEFAULT_RETRY_AFTER)
        self.assertEqual(parse_renewal_info(self.window(), "u", 1.0).retry_after, MIN_RETRY_AFTER)

    def test_garbage(self):
        """Malformed answers are transport errors naming the URL, not crashes."""
        for bad in (
            [],
            {},
            {"suggestedWindow": "soon"},
            self.window(start=5),
            self.window(start="yesterday"),
            self.window(start="2026-03-01T00:00:00"),
            self.window(start="2026-03-05T00:00:00Z"),
        ):
            error = self.assertRaises(AcmeTransportError, parse_renewal_info, bad, "http://ca.test/ari/x", None)
            self.assertIn("ca.test/ari/x", str(error))


class FakeARI(Resource):
    """A directory with renewalInfo, and windows for the certificates it knows."""

    isLeaf = True

    def __init__(self, with_ari=True):
        super().__init__()
        self.with_ari = with_ari
        self.windows = {}
        self.requests = []

    def render_GET(self, request):
        path = request.path.decode()
        self.requests.append(path)
        request.setHeader(b"content-type", b"application/json")
        if path == "/dir":
            directory = {"newNonce": BASE + "/nonce", "newAccount": BASE + "/acct", "newOrder": BASE + "/order"}
            if self.with_ari:
                directory["renewalInfo"] = BASE + "/ari/"
            return json.dumps(directory).encode()
        if path.startswith("/ari/"):
            window = self.windows.get(path[len("/ari/"):])
            if window is None:
                request.setResponseCode(404)
                return json.dumps({"type": "urn:ietf:params:acme:error:malformed", "detail": "unknown"}).encode()
            request.setHeader(b"retry-after", b"21600")
            return json.dumps(window).encode()
        request.setResponseCode(404)
        return b"{}"


class FetchTests(SynchronousTestCase):
    def client(self, resource):
        return self.successResultOf(
            AcmeClient.from_directory(BASE + "/dir", StubTreq(resource), Clock(), generate_account_key("ecc"))
        )

    def test_fetch(self):
        """The window is fetched from renewalInfo/<certID> with its Retry-After."""
        resource = FakeARI()
        leaf = TestCA.create().issue(["a.test"]).leaf
        resource.windows[cert_id(leaf)] = {
            "suggestedWindow": {"start": "2026-03-01T00:00:00Z", "end": "2026-03-02T00:00:00Z"}
        }
        window = self.successResultOf(fetch_renewal_info(self.client(resource), leaf))
        self.assertEqual(window.retry_after, 21600.0)
        self.assertEqual(window.end - window.start, 86400)
        self.assertEqual(resource.requests[-1], "/ari/" + cert_id(leaf))

    def test_no_ari(self):
        """A CA without renewalInfo (Pebble 2.4): None, no request."""
        resource = FakeARI(with_ari=False)
        client = self.client(resource)
        self.assertIsNone(self.successResultOf(fetch_renewal_info(client, TestCA.create().issue(["a.test"]).leaf)))
        self.assertEqual(resource.requests, ["/dir"])

    def test_unknown_certificate(self):
        """The CA's problem document comes back as a failure."""
        from kongacme.errors import AcmeProblem

        client = self.client(FakeARI())
        self.failureResultOf(fetch_renewal_info(client, TestCA.create().issue(["a.test"]).leaf), AcmeProblem)
