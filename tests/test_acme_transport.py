"""
Tests for kongacme.acme.transport: against the fake CA through StubTreq,
and against misbehaving servers on real sockets for what only a network
can do (silence, a connection closed mid-answer, bytes that are not HTTP).
"""

from __future__ import annotations

import email.utils
import json
import time
from typing import Any, Optional

import josepy as jose
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.defer import CancelledError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.server import NOT_DONE_YET

from kongacme.acme.keys import generate_account_key
from kongacme.acme.transport import DEFAULT_BAD_NONCE_RETRIES, MAX_RESPONSE_BYTES, AcmeTransport, jws_algorithm
from kongacme.acme.trust import make_http_client
from kongacme.errors import AcmeError, AcmeProblem, AcmeTransportError
from tests.fakeca import FakeCA
from tests.pebble import free_port, settle


def registered(ca: FakeCA, clock: Clock, **kwargs: Any) -> AcmeTransport:
    """A transport for a new account at ``ca``."""
    transport = AcmeTransport(StubTreq(ca), clock, generate_account_key(), new_nonce_url=ca.url("/new-nonce"), **kwargs)
    results: list = []
    transport.post(ca.url("/new-account"), {"termsOfServiceAgreed": True}, jwk=True).addBoth(results.append)
    transport.kid = results[0].location
    return transport


def respond(code: int, body: bytes, headers: Optional[dict[bytes, bytes]] = None, path: Optional[str] = None) -> Any:
    """A fake CA hook answering ``code``/``body`` (on ``path``, or always)."""

    def hook(request: Any, got_path: str, payload: Any) -> Any:
        if path is not None and got_path != path:
            return None
        request.setResponseCode(code)
        for name, value in (headers or {}).items():
            request.setHeader(name, value)
        return body

    return hook


class JWSAlgorithmTests(SynchronousTestCase):
    """
    Tests for jws_algorithm.
    """

    def test_algorithms(self) -> None:
        """
        RSA keys sign RS256; EC keys ES256/384/512 by curve.
        """
        self.assertEqual(jws_algorithm(jose.JWKRSA(key=rsa.generate_private_key(65537, 2048))), jose.RS256)
        self.assertEqual(jws_algorithm(jose.JWKEC(key=ec.generate_private_key(ec.SECP256R1()))), jose.ES256)
        self.assertEqual(jws_algorithm(jose.JWKEC(key=ec.generate_private_key(ec.SECP384R1()))), jose.ES384)
        self.assertRaises(ValueError, jws_algorithm, jose.JWKOct(key=b"secret"))


class TransportTests(SynchronousTestCase):
    """
    Tests for AcmeTransport against the fake CA.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.ca = FakeCA()
        self.transport = registered(self.ca, self.clock)

    def test_rsa_account(self) -> None:
        """
        An RSA account key signs with RS256, which the CA verifies.
        """
        transport = AcmeTransport(
            StubTreq(self.ca), self.clock, generate_account_key("rsa"), new_nonce_url=self.ca.url("/new-nonce")
        )
        response = self.successResultOf(
            transport.post(self.ca.url("/new-account"), {"termsOfServiceAgreed": True}, jwk=True)
        )
        self.assertEqual(response.code, 201)

    def test_nonce_reuse(self) -> None:
        """
        One newNonce request is enough: every answer's Replay-Nonce is used
        for the next request (RFC 8555 §7.2).
        """
        for _ in range(3):
            self.successResultOf(
                self.transport.post(self.ca.url("/new-order"), {"identifiers": [{"type": "dns", "value": "a.test"}]})
            )
        self.assertEqual([path for method, path in self.ca.log if path == "/new-nonce"], ["/new-nonce"])

    def test_new_nonce_when_pool_empty(self) -> None:
        """
        When an answer carried no nonce, the next request fetches one with
        HEAD newNonce.
        """
        self.ca.hooks.append(respond(200, b"{}", path="/new-order"))
        self.successResultOf(self.transport.post(self.ca.url("/new-order"), {}))
        self.ca.hooks.clear()
        self.successResultOf(
            self.transport.post(self.ca.url("/new-order"), {"identifiers": [{"type": "dns", "value": "a.test"}]})
        )
        self.assertEqual([m for m, p in self.ca.log if p == "/new-nonce"], ["HEAD", "HEAD"])

    def test_no_nonce_at_all(self) -> None:
        """
        A newNonce answer without Replay-Nonce is a transport error.
        """
        transport = AcmeTransport(
            StubTreq(self.ca), self.clock, generate_account_key(), new_nonce_url=self.ca.url("/new-nonce")
        )
        self.ca.hooks.append(respond(200, b"", path="/new-nonce"))
        error = self.failureResultOf(
            transport.post(self.ca.url("/new-account"), {}, jwk=True), AcmeTransportError
        ).value
        self.assertEqual(error.url, self.ca.url("/new-nonce"))

    def test_bad_nonce_retried(self) -> None:
        """
        badNonce is retried with a fresh nonce, many times if need be.
        """
        self.ca.reject_nonces = DEFAULT_BAD_NONCE_RETRIES
        response = self.successResultOf(
            self.transport.post(self.ca.url("/new-order"), {"identifiers": [{"type": "dns", "value": "a.test"}]})
        )
        self.assertEqual(response.code, 201)
        self.assertEqual(len([p for m, p in self.ca.log if p == "/new-order"]), DEFAULT_BAD_NONCE_RETRIES + 1)

    def test_bad_nonce_gives_up(self) -> None:
        """
        After bad_nonce_retries the badNonce problem is raised.
        """
        transport = registered(self.ca, self.clock, bad_nonce_retries=2)
        self.ca.reject_nonces = 3
        problem = self.failureResultOf(transport.post_as_get(self.ca.url("/order/1")), AcmeProblem).value
        self.assertEqual(problem.type, "urn:ietf:params:acme:error:badNonce")
        self.assertEqual(problem.status, 400)

    def test_post_as_get(self) -> None:
        """
        POST-as-GET signs an empty payload with the account's kid (the fake
        CA checks both) and sends Accept when asked.
        """
        seen = []

        def hook(request: Any, path: str, payload: Any) -> None:
            seen.append((path, payload, request.getHeader(b"Accept")))

        self.ca.hooks.append(hook)
        d = self.transport.post_as_get(self.ca.url("/nothing"), accept="application/pem-certificate-chain")
        self.failureResultOf(d, AcmeProblem)
        self.assertEqual(seen, [("/nothing", None, b"application/pem-certificate-chain")])

    def test_no_account(self) -> None:
        """
        Signing with a kid before there is an account is refused locally.
        """
        transport = AcmeTransport(
            StubTreq(self.ca), self.clock, generate_account_key(), new_nonce_url=self.ca.url("/new-nonce")
        )
        self.failureResultOf(transport.post_as_get(self.ca.url("/order/1")), AcmeError)
        self.assertEqual(self.ca.log[-1], ("POST", "/new-account"))

    def test_problem_document(self) -> None:
        """
        A non-2xx answer with a problem document becomes an AcmeProblem
        with the CA's type, detail and status.
        """
        problem = self.failureResultOf(
            self.transport.post(self.ca.url("/new-order"), {"identifiers": []}), AcmeProblem
        ).value
        self.assertEqual(problem.type, "urn:ietf:params:acme:error:rejectedIdentifier")
        self.assertEqual(problem.detail, "one dns identifier please")
        self.assertEqual(problem.status, 400)
        self.assertIsNone(problem.retry_after)

    def test_rate_limited(self) -> None:
        """
        429 with Retry-After surfaces at once as an AcmeProblem carrying
        retry_after: the transport does not sleep on a rate limit.
        """
        body = json.dumps({"type": "urn:ietf:params:acme:error:rateLimited", "detail": "too many new orders"}).encode()
        self.ca.hooks.append(
            respond(429, body, {b"Retry-After": b"3600", b"Content-Type": b"application/problem+json"})
        )
        problem = self.failureResultOf(self.transport.post(self.ca.url("/new-order"), {}), AcmeProblem).value
        self.assertEqual(
            (problem.type, problem.detail, problem.status, problem.retry_after),
            ("urn:ietf:params:acme:error:rateLimited", "too many new orders", 429, 3600.0),
        )
        self.assertEqual(len([p for m, p in self.ca.log if p == "/new-order"]), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_rate_limited_http_date(self) -> None:
        """
        A Retry-After HTTP-date is turned into seconds from the clock's now.
        """
        self.clock.advance(1_700_000_000)
        date = email.utils.formatdate(1_700_000_000 + 600, usegmt=True).encode()
        self.ca.hooks.append(
            respond(429, b'{"type": "urn:ietf:params:acme:error:rateLimited"}', {b"Retry-After": date})
        )
        problem = self.failureResultOf(self.transport.post(self.ca.url("/new-order"), {}), AcmeProblem).value
        self.assertEqual(problem.retry_after, 600.0)

    def test_error_without_problem(self) -> None:
        """
        A non-2xx answer that is not a problem document (a proxy's HTML page)
        becomes an about:blank AcmeProblem with the status and the start of
        the body.
        """
        self.ca.hooks.append(respond(502, b"<html>Bad Gateway</html>\n", {b"Retry-After": b"5"}))
        problem = self.failureResultOf(self.transport.post_as_get(self.ca.url("/x")), AcmeProblem).value
        self.assertEqual(problem.type, "about:blank")
        self.assertEqual(problem.status, 502)
        self.assertEqual(problem.retry_after, 5.0)
        self.assertIn("Bad Gateway", problem.detail)

    def test_redirect_not_followed(self) -> None:
        """
        Redirects are not followed (a signed request is bound to its URL):
        a 3xx is an error like any other non-2xx.
        """
        self.ca.hooks.append(respond(301, b"", {b"Location": b"https://elsewhere.test/"}, path="/x"))
        problem = self.failureResultOf(self.transport.post_as_get(self.ca.url("/x")), AcmeProblem).value
        self.assertEqual(problem.status, 301)

    def test_too_large(self) -> None:
        """
        An answer larger than the limit is a transport error.
        """
        self.ca.hooks.append(respond(200, b"x" * (MAX_RESPONSE_BYTES + 1)))
        error = self.failureResultOf(self.transport.post_as_get(self.ca.url("/x")), AcmeTransportError).value
        self.assertIn("larger than", error.reason)

    def test_timeout_with_clock(self) -> None:
        """
        An answer that never comes fails with AcmeTransportError once the
        timeout has passed on the injected clock.
        """
        transport = registered(self.ca, self.clock, timeout=5)
        self.ca.hooks.append(lambda request, path, payload: NOT_DONE_YET)
        d = transport.post_as_get(self.ca.url("/x"))
        self.clock.advance(4.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        error = self.failureResultOf(d, AcmeTransportError).value
        self.assertEqual(error.reason, "no complete answer within 5 s")

    def test_cancel(self) -> None:
        """
        Cancelling a request gives CancelledError, not a transport error.
        """
        self.ca.hooks.append(lambda request, path, payload: NOT_DONE_YET)
        d = self.transport.post_as_get(self.ca.url("/x"))
        d.cancel()
        self.failureResultOf(d, CancelledError)

    def test_bad_payload(self) -> None:
        """
        A payload of an unsupported type is a TypeError.
        """
        self.assertRaises(TypeError, self.transport.post, self.ca.url("/x"), ["list"])

    def test_invalid_timeout(self) -> None:
        """
        The timeout must be positive.
        """
        self.assertRaises(ValueError, AcmeTransport, StubTreq(self.ca), self.clock, generate_account_key(), timeout=0)


class Script(Protocol):
    """
    A server that answers every connection with ``script`` and then, if
    ``close``, closes; otherwise stays silent.
    """

    def __init__(self, script: bytes, close: bool, lost: list) -> None:
        self.script = script
        self.close = close
        self.lost = lost

    def dataReceived(self, data: bytes) -> None:
        if self.script is not None:
            self.transport.write(self.script)
            self.script = None
            if self.close:
                self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        self.lost.append(reason)


class NetworkTests(TestCase):
    """
    Tests for AcmeTransport over real sockets to misbehaving servers.
    """

    def serve(self, script: bytes, close: bool) -> str:
        self.lost: list = []
        factory = Factory.forProtocol(lambda: Script(script, close, self.lost))
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(lambda: port.stopListening().addCallback(lambda _: settle()))
        return "http://127.0.0.1:%d/acme" % (port.getHost().port,)

    def transport(self, timeout: float = 5.0) -> AcmeTransport:
        return AcmeTransport(make_http_client(reactor), reactor, generate_account_key(), timeout=timeout)

    async def test_silent_server(self) -> None:
        """
        A CA that accepts the connection and never answers fails with
        AcmeTransportError after the configured timeout, and the connection
        is closed.
        """
        url = self.serve(b"", close=False)
        start = time.monotonic()
        with self.assertRaises(AcmeTransportError) as caught:
            await self.transport(timeout=0.3).get(url)
        elapsed = time.monotonic() - start
        self.assertEqual(caught.exception.url, url)
        self.assertEqual(caught.exception.reason, "no complete answer within 0.3 s")
        self.assertTrue(0.25 < elapsed < 2, elapsed)
        await settle()
        self.assertEqual(len(self.lost), 1)

    async def test_stalled_body(self) -> None:
        """
        The timeout also covers the body: headers then silence fails too.
        """
        url = self.serve(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{", close=False)
        with self.assertRaises(AcmeTransportError) as caught:
            await self.transport(timeout=0.3).get(url)
        self.assertEqual(caught.exception.reason, "no complete answer within 0.3 s")

    async def test_closed_mid_body(self) -> None:
        """
        A connection closed before the announced body is complete is an
        AcmeTransportError, not a truncated success.
        """
        url = self.serve(
            b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\nContent-Type: application/json\r\n\r\n{"newNonce": ', close=True
        )
        with self.assertRaises(AcmeTransportError) as caught:
            await self.transport().get(url)
        self.assertEqual(caught.exception.url, url)
        self.assertIn("body incomplete", caught.exception.reason)

    async def test_closed_mid_headers(self) -> None:
        """
        A connection closed in the middle of the headers is an
        AcmeTransportError.
        """
        url = self.serve(b"HTTP/1.1 200 OK\r\nContent-Len", close=True)
        with self.assertRaises(AcmeTransportError):
            await self.transport().get(url)

    async def test_not_http(self) -> None:
        """
        Bytes that are not HTTP at all are an AcmeTransportError.
        """
        url = self.serve(b"\x16\x03\x01 garbage garbage\r\n\r\n", close=True)
        with self.assertRaises(AcmeTransportError) as caught:
            await self.transport().get(url)
        self.assertIn("not an HTTP answer", caught.exception.reason)

    async def test_refused(self) -> None:
        """
        A refused connection is an AcmeTransportError naming the URL.
        """
        url = "http://127.0.0.1:%d/dir" % (free_port(),)
        with self.assertRaises(AcmeTransportError) as caught:
            await self.transport().get(url)
        self.assertIn("refused", caught.exception.reason.lower())
