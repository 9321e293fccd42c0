"""
Tests for kongacme.web.challenge (and the limits of kongacme.web._channel and
the forwarding of kongacme.web.proxy), over real sockets on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import fail, inlineCallbacks
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from kongacme.interfaces import IChallengeTokenStore
from kongacme.web._channel import QuietSite
from kongacme.web.challenge import HTTPSettings, make_http_factory
from tests.test_web_support import (
    FakeRoute,
    FakeRouter,
    ServerMixin,
    connect,
    exchange,
    get,
    parse_response,
)

TOKEN = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA"
KEY_AUTHORIZATION = TOKEN + ".9jg46WB3rR_AHD-EBXdN7cBkH1WOu0tA3M9fm21mqTI"
CHALLENGE = b"/.well-known/acme-challenge/"
CURL = "/usr/bin/curl"


@implementer(IChallengeTokenStore)
class BrokenTokenStore:
    """
    A token store whose reads fail.
    """

    def get(self, token: str) -> Any:
        return fail(RuntimeError("storage down"))

    def put(self, token: str, key_authorization: str, ttl: float = 3600) -> Any:
        raise NotImplementedError

    def remove(self, token: str) -> Any:
        raise NotImplementedError


class Echo(Resource):
    """
    An upstream that describes the request it got, as JSON.
    """

    isLeaf = True

    def render(self, request: Any) -> Any:
        if request.path == b"/chunked":
            request.write(b"part1-")
            request.write(b"part2")
            request.finish()
            return NOT_DONE_YET
        request.content.seek(0)
        headers = request.requestHeaders
        described = {
            "method": request.method.decode(),
            "uri": request.uri.decode(),
            "body_length": len(request.content.read()),
        }
        for name in ("host", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "connection", "x-custom"):
            described[name] = [v.decode() for v in headers.getRawHeaders(name.encode(), [])]
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"x-upstream", b"echo")
        return json.dumps(described).encode()


class ChallengeTests(ServerMixin, TestCase):
    """
    Tests for the http-01 answers of ChallengeResource.
    """

    @inlineCallbacks
    def test_token_served(self) -> Any:
        """
        A known token answers 200 text/plain with exactly the key
        authorization.
        """
        self.tokens.put(TOKEN, KEY_AUTHORIZATION)
        _, port = self.start()
        response = yield get(port, CHALLENGE + TOKEN.encode())
        self.assertEqual(response.status, 200)
        self.assertEqual(response.header(b"content-type"), b"text/plain; charset=utf-8")
        self.assertEqual(response.body, KEY_AUTHORIZATION.encode())

    @inlineCallbacks
    def test_head(self) -> Any:
        """
        HEAD answers 200 with the Content-Length of the key authorization
        and no body.
        """
        self.tokens.put(TOKEN, KEY_AUTHORIZATION)
        _, port = self.start()
        response = yield get(port, CHALLENGE + TOKEN.encode(), method=b"HEAD")
        self.assertEqual(response.status, 200)
        self.assertEqual(response.header(b"content-length"), b"%d" % (len(KEY_AUTHORIZATION),))
        self.assertTrue(response.raw.endswith(b"\r\n\r\n"))

    @inlineCallbacks
    def test_unknown_token(self) -> Any:
        """
        An unknown token answers 404 "Not found\\n", whatever the mode.
        """
        _, port = self.start()
        response = yield get(port, CHALLENGE + b"unknown-token")
        self.assertEqual((response.status, response.body), (404, b"Not found\n"))

    @inlineCallbacks
    def test_sanity_probe(self) -> Any:
        """
        Token "x" (Kong's sanity probe) answers 404 with body exactly
        "Not found\\n", even if a store held an "x".
        """
        self.tokens.put("x", "x.thumb")
        _, port = self.start()
        response = yield get(port, CHALLENGE + b"x")
        self.assertEqual(response.status, 404)
        self.assertEqual(response.body, b"Not found\n")
        self.assertEqual(response.header(b"content-type"), b"text/plain; charset=utf-8")

    @inlineCallbacks
    def test_not_base64url(self) -> Any:
        """
        Tokens that are empty, over 256 characters or not base64url answer
        404 even when the store holds them; so do extra path segments.
        """
        for token in ("a.b", "a+b", "a=", "a%2Fb", "a" * 257):
            self.tokens.put(token, "ka")
        self.tokens.put(TOKEN, KEY_AUTHORIZATION)
        _, port = self.start()
        paths = [b"a.b", b"a+b", b"a=", b"a%2Fb", b"a" * 257, b"", TOKEN.encode() + b"/", TOKEN.encode() + b"/x"]
        for path in paths:
            response = yield get(port, CHALLENGE + path)
            self.assertEqual((path, response.status, response.body), (path, 404, b"Not found\n"))
        response = yield get(port, CHALLENGE + b"a" * 256)
        self.assertEqual(response.status, 404)

    @inlineCallbacks
    def test_served_in_every_mode(self) -> Any:
        """
        Challenges are answered in proxy and not_found mode too, and with a
        query string.
        """
        self.tokens.put(TOKEN, KEY_AUTHORIZATION)
        for mode in ("proxy", "not_found"):
            _, port = self.start(mode=mode)
            response = yield get(port, CHALLENGE + TOKEN.encode() + b"?probe=1")
            self.assertEqual((response.status, response.body), (200, KEY_AUTHORIZATION.encode()))

    @inlineCallbacks
    def test_store_failure(self) -> Any:
        """
        A failing token store answers 500 and logs the failure.
        """
        self.tokens = BrokenTokenStore()
        _, port = self.start()
        response = yield get(port, CHALLENGE + TOKEN.encode())
        self.assertEqual(response.status, 500)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class RedirectTests(ServerMixin, TestCase):
    """
    Tests for redirect mode.
    """

    @inlineCallbacks
    def test_get_301(self) -> Any:
        """
        GET redirects with 301 to https on the Host without its port,
        keeping path and query.
        """
        _, port = self.start()
        response = yield get(port, b"/some/path?a=1&b=%20x", host=b"Example.COM:8080")
        self.assertEqual(response.status, 301)
        self.assertEqual(response.header(b"location"), b"https://example.com/some/path?a=1&b=%20x")

    @inlineCallbacks
    def test_head_301(self) -> Any:
        """
        HEAD also gets a 301.
        """
        _, port = self.start()
        response = yield get(port, b"/", method=b"HEAD")
        self.assertEqual((response.status, response.header(b"location")), (301, b"https://example.com/"))

    @inlineCallbacks
    def test_other_methods_308(self) -> Any:
        """
        POST and other methods get 308, which keeps method and body.
        """
        _, port = self.start()
        response = yield get(port, b"/form", method=b"POST", body=b"a=1")
        self.assertEqual((response.status, response.header(b"location")), (308, b"https://example.com/form"))
        response = yield get(port, b"/x", method=b"DELETE")
        self.assertEqual(response.status, 308)

    @inlineCallbacks
    def test_https_port(self) -> Any:
        """
        A configured https_port other than 443 is added to the URL; 443 is
        left out.
        """
        _, port = self.start(https_port=8443)
        response = yield get(port, b"/p?q", host=b"example.com:80")
        self.assertEqual(response.header(b"location"), b"https://example.com:8443/p?q")
        _, port = self.start(https_port=443)
        response = yield get(port, b"/p")
        self.assertEqual(response.header(b"location"), b"https://example.com/p")

    @inlineCallbacks
    def test_ip_literals(self) -> Any:
        """
        IPv4 and bracketed IPv6 Host values redirect to the same literal.
        """
        _, port = self.start(https_port=8443)
        response = yield get(port, b"/", host=b"[::1]:80")
        self.assertEqual(response.header(b"location"), b"https://[::1]:8443/")
        response = yield get(port, b"/", host=b"192.0.2.7")
        self.assertEqual(response.header(b"location"), b"https://192.0.2.7:8443/")

    @inlineCallbacks
    def test_hostile_hosts(self) -> Any:
        """
        Missing, repeated or invalid Host headers answer 400 and nothing of
        them appears in the response.
        """
        _, port = self.start()
        hostile = [
            b"evil.example\rX-Injected: 1",
            b"evil.example\r\n Location: https://evil.example/",
            b"evil .example",
            b"evil.example/path",
            b"user@evil.example",
            b"evil.example:99999",
            b"evil.example:x",
            b"<script>evil</script>",
            b"evil." + b"a" * 300,
            b"evil.example\x00",
            b"\xffevil.example",
            b"[evil::example]",
            b"-evil.example",
            b"999.1.1.1",
        ]
        for host in hostile:
            response = yield get(port, b"/", host=host)
            self.assertEqual((host, response.status), (host, 400))
            self.assertNotIn(b"evil", response.raw.lower())
            self.assertIsNone(response.header(b"location"))
        missing = yield exchange(port, b"GET / HTTP/1.0\r\n\r\n")
        self.assertEqual(missing.status, 400)
        twice = yield get(port, b"/", headers=b"Host: evil.example\r\n")
        self.assertEqual(twice.status, 400)
        self.assertNotIn(b"evil", twice.raw)

    @inlineCallbacks
    def test_absolute_form_refused(self) -> Any:
        """
        An absolute-form request target (a proxy request) answers 400.
        """
        _, port = self.start()
        response = yield get(port, b"http://evil.example/")
        self.assertEqual(response.status, 400)
        self.assertNotIn(b"evil", response.raw)


class ModeTests(ServerMixin, TestCase):
    """
    Tests for not_found and proxy mode, and for changing the mode.
    """

    def start_upstream(self) -> int:
        return self.listen(QuietSite(Echo(), reactor=reactor))

    @inlineCallbacks
    def test_not_found(self) -> Any:
        """
        In not_found mode every non-challenge request answers 404, Host or
        no Host.
        """
        _, port = self.start(mode="not_found")
        response = yield get(port, b"/anything")
        self.assertEqual((response.status, response.body), (404, b"Not found\n"))
        response = yield get(port, b"/", host=None, method=b"POST", body=b"x")
        self.assertEqual(response.status, 404)

    @inlineCallbacks
    def test_proxy(self) -> Any:
        """
        In proxy mode a request reaches the route's upstream with method,
        path, query, body and X-Forwarded-* headers; hop-by-hop headers and
        spoofed X-Forwarded-Host are not passed on; the response comes back
        with its headers.
        """
        upstream = self.start_upstream()
        self.router = FakeRouter({"app.example": FakeRoute("127.0.0.1", upstream)})
        _, port = self.start(mode="proxy", max_body_bytes=1000)
        body = b"b" * 2000
        response = yield get(
            port, b"/api/v1?x=1", host=b"App.Example", method=b"PUT", body=body,
            headers=b"X-Custom: kept\r\nX-Forwarded-Host: spoofed\r\nKeep-Alive: 5\r\n",
        )
        self.assertEqual(response.status, 200)
        self.assertEqual(response.header(b"x-upstream"), b"echo")
        seen = json.loads(response.body)
        self.assertEqual(seen["method"], "PUT")
        self.assertEqual(seen["uri"], "/api/v1?x=1")
        self.assertEqual(seen["body_length"], 2000)
        self.assertEqual(seen["host"], [f"127.0.0.1:{upstream}"])
        self.assertEqual(seen["x-forwarded-for"], ["127.0.0.1"])
        self.assertEqual(seen["x-forwarded-host"], ["App.Example"])
        self.assertEqual(seen["x-forwarded-proto"], ["http"])
        self.assertEqual(seen["x-custom"], ["kept"])

    @inlineCallbacks
    def test_proxy_preserve_host_and_chunked(self) -> Any:
        """
        A route with preserve_host sends the client's Host; a chunked
        upstream response arrives intact (decoded once, re-encoded once).
        """
        upstream = self.start_upstream()
        self.router = FakeRouter({"app.example": FakeRoute("127.0.0.1", upstream, preserve_host=True)})
        _, port = self.start(mode="proxy")
        response = yield get(port, b"/", host=b"app.example:80")
        self.assertEqual(json.loads(response.body)["host"], ["app.example:80"])
        response = yield get(port, b"/chunked", host=b"app.example")
        self.assertEqual((response.status, response.body), (200, b"part1-part2"))

    @inlineCallbacks
    def test_proxy_no_route(self) -> Any:
        """
        In proxy mode a host without a route answers 404.
        """
        _, port = self.start(mode="proxy")
        response = yield get(port, b"/", host=b"unknown.example")
        self.assertEqual((response.status, response.body), (404, b"Not found\n"))

    @inlineCallbacks
    def test_proxy_upstream_down(self) -> Any:
        """
        An upstream that refuses connections answers 502.
        """
        closed = reactor.listenTCP(0, QuietSite(Echo(), reactor=reactor), interface="127.0.0.1")
        dead = closed.getHost().port
        yield closed.stopListening()
        self.router = FakeRouter({"app.example": FakeRoute("127.0.0.1", dead)})
        _, port = self.start(mode="proxy")
        response = yield get(port, b"/", host=b"app.example")
        self.assertEqual((response.status, response.body), (502, b"Bad Gateway\n"))

    @inlineCallbacks
    def test_reconfigure(self) -> Any:
        """
        site.reconfigure changes mode and https_port from the next request;
        the router getter is asked on every request; an invalid change
        raises and keeps the old settings.
        """
        site, port = self.start()
        response = yield get(port, b"/")
        self.assertEqual(response.status, 301)
        site.reconfigure(mode="not_found")
        response = yield get(port, b"/")
        self.assertEqual(response.status, 404)
        site.reconfigure(mode="redirect", https_port=9443)
        response = yield get(port, b"/")
        self.assertEqual(response.header(b"location"), b"https://example.com:9443/")
        self.assertRaises(ValueError, site.reconfigure, mode="bogus")
        self.assertRaises(TypeError, site.reconfigure, colour="blue")
        self.assertEqual(site.settings.mode, "redirect")
        site.reconfigure(mode="proxy")
        response = yield get(port, b"/", host=b"app.example")
        self.assertEqual(response.status, 404)
        upstream = self.start_upstream()
        self.router = FakeRouter({"app.example": FakeRoute("127.0.0.1", upstream)})
        response = yield get(port, b"/", host=b"app.example")
        self.assertEqual(response.status, 200)


class LimitTests(ServerMixin, TestCase):
    """
    Tests for the size and time limits of the port-80 channel.
    """

    @inlineCallbacks
    def test_header_line_too_large(self) -> Any:
        """
        A header line longer than max_header_bytes answers 431 and closes.
        """
        _, port = self.start(max_header_bytes=1024)
        response = yield get(port, b"/", headers=b"X-Big: " + b"a" * 2000 + b"\r\n")
        self.assertEqual(response.status, 431)
        self.assertEqual(response.header(b"connection"), b"close")

    @inlineCallbacks
    def test_headers_too_large(self) -> Any:
        """
        Many small headers adding up to more than max_header_bytes answer
        431.
        """
        _, port = self.start(max_header_bytes=1024)
        headers = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 40) for i in range(40))
        response = yield get(port, b"/", headers=headers)
        self.assertEqual(response.status, 431)

    @inlineCallbacks
    def test_request_line_too_long(self) -> Any:
        """
        A request line longer than max_request_line_bytes answers 414.
        """
        _, port = self.start(max_request_line_bytes=512)
        response = yield get(port, b"/" + b"a" * 600)
        self.assertEqual(response.status, 414)

    @inlineCallbacks
    def test_body_too_large(self) -> Any:
        """
        A declared Content-Length over max_body_bytes answers 413 before
        the body is sent; so does a chunked body that grows past it.
        """
        _, port = self.start(max_body_bytes=1000)
        response = yield exchange(
            port, b"POST / HTTP/1.1\r\nHost: example.com\r\nContent-Length: 100000\r\n\r\n"
        )
        self.assertEqual(response.status, 413)
        chunked = b"".join(b"190\r\n" + b"c" * 400 + b"\r\n" for _ in range(5)) + b"0\r\n\r\n"
        response = yield exchange(
            port, b"POST / HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked
        )
        self.assertEqual(response.status, 413)
        response = yield get(port, b"/", method=b"POST", body=b"x" * 1000)
        self.assertEqual(response.status, 308)

    @inlineCallbacks
    def test_trickling_client_cut_off(self) -> Any:
        """
        A client sending one byte every 0.1 s is cut off (408, closed) once
        request_timeout (0.5 s) has passed since the connection started,
        although every byte would reset an idle timeout.
        """
        _, port = self.start(request_timeout=0.5)
        client = yield connect(port)
        started = reactor.seconds()
        client.trickle(b"GET / HTTP/1.1\r\nHost: example.com\r\nX-Slow: " + b"s" * 100 + b"\r\n\r\n", 0.1)
        raw = yield client.closed
        elapsed = client.closed_at - started
        self.assertTrue(0.45 <= elapsed < 2.0, elapsed)
        self.assertEqual(parse_response(raw).status, 408)

    @inlineCallbacks
    def test_idle_keep_alive_closed(self) -> Any:
        """
        After a response, a keep-alive connection that sends nothing more
        is closed after request_timeout, without a response.
        """
        _, port = self.start(request_timeout=0.5)
        client = yield connect(port)
        client.transport.write(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")
        raw = yield client.closed
        self.assertEqual(parse_response(raw).status, 301)
        self.assertEqual(raw.count(b"HTTP/1.1"), 1)

    @inlineCallbacks
    def test_keep_alive_deadline_rearmed(self) -> Any:
        """
        The deadline counts from the end of the previous response: a second
        request on the same connection is served.
        """
        self.tokens.put(TOKEN, KEY_AUTHORIZATION)
        _, port = self.start(request_timeout=0.5)
        client = yield connect(port)
        path = CHALLENGE + TOKEN.encode()
        client.transport.write(b"GET " + path + b" HTTP/1.1\r\nHost: a.example\r\n\r\n")
        reactor.callLater(
            0.3, client.transport.write,
            b"GET " + path + b" HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n",
        )
        raw = yield client.closed
        self.assertEqual(raw.count(KEY_AUTHORIZATION.encode()), 2)

    @inlineCallbacks
    def test_garbage(self) -> Any:
        """
        Garbage instead of HTTP (a TLS ClientHello, binary noise) answers
        400 and closes; the next client is served normally.
        """
        self.tokens.put(TOKEN, KEY_AUTHORIZATION)
        _, port = self.start(max_header_bytes=1024)
        for garbage in (
            b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\xff\xfe\r\n\r\n",
            b"\x00\x01\x02\x03" * 600,
            b"GET\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: example.com\r\nContent-Length: -5\r\n\r\n",
        ):
            response = yield exchange(port, garbage)
            self.assertEqual(response.status, 400, garbage[:20])
        response = yield get(port, CHALLENGE + TOKEN.encode())
        self.assertEqual(response.body, KEY_AUTHORIZATION.encode())


class CurlTests(ServerMixin, TestCase):
    """
    Tests for the port-80 site with a real curl client.
    """

    def setUp(self) -> None:
        if not os.access(CURL, os.X_OK):
            raise self.skipTest("no " + CURL)
        super().setUp()

    def curl(self, *args: str) -> Any:
        return getProcessOutputAndValue(
            CURL, ("--silent", "--show-error", "--noproxy", "*", "--max-time", "10") + args,
            env={"PATH": "/usr/bin:/bin"}, reactor=reactor,
        )

    @inlineCallbacks
    def test_curl(self) -> Any:
        """
        curl fetches a challenge token, and is sent a 301 with the https
        Location (not followed) for anything else.
        """
        self.tokens.put(TOKEN, KEY_AUTHORIZATION)
        _, port = self.start(https_port=8443)
        base = f"http://127.0.0.1:{port}"
        out, err, code = yield self.curl(
            "-H", "Host: www.example.com", f"{base}/.well-known/acme-challenge/{TOKEN}"
        )
        self.assertEqual((out, err, code), (KEY_AUTHORIZATION.encode(), b"", 0))
        out, err, code = yield self.curl(
            "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}", "-H", "Host: www.example.com:80",
            f"{base}/shop?item=1",
        )
        self.assertEqual((out, code), (b"301 https://www.example.com:8443/shop?item=1", 0))


class HTTPSettingsTests(SynchronousTestCase):
    """
    Tests for HTTPSettings.
    """

    def test_defaults(self) -> None:
        """
        The defaults redirect, without an https port, with 64 KiB bodies.
        """
        settings = HTTPSettings()
        self.assertEqual((settings.mode, settings.https_port, settings.max_body_bytes), ("redirect", None, 65536))

    def test_invalid(self) -> None:
        """
        Unknown modes, out-of-range ports and non-positive limits raise
        ValueError.
        """
        self.assertRaises(ValueError, HTTPSettings, mode="redirects")
        self.assertRaises(ValueError, HTTPSettings, https_port=0)
        self.assertRaises(ValueError, HTTPSettings, https_port=70000)
        self.assertRaises(ValueError, HTTPSettings, https_port=True)
        self.assertRaises(ValueError, HTTPSettings, request_timeout=0)
        self.assertRaises(ValueError, HTTPSettings, max_header_bytes=-1)

    def test_make_http_factory_checks_store(self) -> None:
        """
        make_http_factory refuses a token store that does not provide
        IChallengeTokenStore.
        """
        self.assertRaises(
            TypeError, make_http_factory, object(), "redirect", lambda: None, None, 16384, 5.0, reactor
        )
