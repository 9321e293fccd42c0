"""
Tests for kongacme.web.admin, over real sockets on 127.0.0.1.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import fail, inlineCallbacks, succeed
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from kongacme.web.admin import (
    MAX_BODY,
    AdminResource,
    AdminSettings,
    RequestError,
    make_admin_factory,
    read_arguments,
    truthy,
)
from kongacme.web._channel import LINGER_BYTES
from kongacme.web.responses import Raw
from tests.test_web_support import connect, exchange, get, listen, parse_response, upload_then_read


class AdminTests(TestCase):
    """
    Tests for make_admin_factory.
    """

    status: Any = {"certificates": [{"host": "example.com", "valid": True}]}

    def start(self, token: str | None = None) -> int:
        return listen(self, make_admin_factory(lambda: self.status, token, reactor=reactor))

    def assertJSON(self, response: Any, status: int, body: Any) -> None:
        self.assertEqual(response.status, status)
        self.assertEqual(response.header(b"content-type"), b"application/json")
        self.assertEqual(json.loads(response.body), body)

    @inlineCallbacks
    def test_health(self) -> Any:
        """
        GET /health answers 200 {"status": "ok"}.
        """
        port = self.start()
        response = yield get(port, b"/health")
        self.assertJSON(response, 200, {"status": "ok"})

    @inlineCallbacks
    def test_head_health(self) -> Any:
        """
        HEAD /health answers 200 with a Content-Length and no body.
        """
        port = self.start()
        response = yield get(port, b"/health", method=b"HEAD")
        self.assertEqual(response.status, 200)
        self.assertEqual(response.header(b"content-length"), b"%d" % (len(b'{"status":"ok"}'),))
        self.assertTrue(response.raw.endswith(b"\r\n\r\n"))

    @inlineCallbacks
    def test_status(self) -> Any:
        """
        GET /status answers 200 with what status_provider returns, asked
        afresh on every request.
        """
        port = self.start()
        response = yield get(port, b"/status")
        self.assertJSON(response, 200, self.status)
        self.status = {"changed": 1}
        response = yield get(port, b"/status?verbose=1")
        self.assertJSON(response, 200, {"changed": 1})

    @inlineCallbacks
    def test_not_found(self) -> Any:
        """
        Unknown paths answer 404 {"message": "Not found"}, whatever the
        method.
        """
        port = self.start()
        for method, path in [(b"GET", b"/"), (b"GET", b"/health/"), (b"POST", b"/nope"), (b"BREW", b"/x")]:
            response = yield get(port, path, method=method)
            self.assertJSON(response, 404, {"message": "Not found"})

    @inlineCallbacks
    def test_method_not_allowed(self) -> Any:
        """
        A known path asked with another method answers 405 with an Allow
        header listing its methods (HEAD with GET).
        """
        port = self.start()
        for method, path in [(b"POST", b"/health"), (b"DELETE", b"/status"), (b"BREW", b"/health")]:
            response = yield get(port, path, method=method)
            self.assertJSON(response, 405, {"message": "Method not allowed"})
            self.assertEqual(response.header(b"allow"), b"GET, HEAD")

    @inlineCallbacks
    def test_status_provider_fails(self) -> Any:
        """
        A status_provider that raises, or returns something that is not
        JSON-serialisable, answers 500 and logs the failure.
        """
        port = self.start()
        self.status = {"bad": object()}
        response = yield get(port, b"/status")
        self.assertJSON(response, 500, {"message": "An unexpected error occurred"})
        self.assertEqual(len(self.flushLoggedErrors(TypeError)), 1)

    @inlineCallbacks
    def test_token_required(self) -> Any:
        """
        With a token, requests without it, with another token or another
        scheme answer 401 {"message": "Unauthorized"} with a
        WWW-Authenticate header, unknown paths included.
        """
        port = self.start(token="s3cret")
        for headers in [b"", b"Authorization: Bearer wrong\r\n", b"Authorization: Basic s3cret\r\n",
                        b"Authorization: Bearer s3cret-longer\r\n", b"Authorization: s3cret\r\n",
                        b"Authorization: Bearer s3cret\r\nAuthorization: Bearer s3cret\r\n"]:
            for path in (b"/health", b"/nope"):
                response = yield get(port, path, headers=headers)
                self.assertJSON(response, 401, {"message": "Unauthorized"})
                self.assertEqual(response.header(b"www-authenticate"), b'Bearer realm="kongacme"')

    @inlineCallbacks
    def test_token_accepted(self) -> Any:
        """
        With the right bearer token (scheme case-insensitive) requests are
        served as without authentication.
        """
        port = self.start(token="s3cret")
        response = yield get(port, b"/health", headers=b"Authorization: Bearer s3cret\r\n")
        self.assertJSON(response, 200, {"status": "ok"})
        response = yield get(port, b"/status", headers=b"Authorization: bearer s3cret\r\n")
        self.assertJSON(response, 200, self.status)
        response = yield get(port, b"/nope", headers=b"Authorization: Bearer s3cret\r\n")
        self.assertJSON(response, 404, {"message": "Not found"})


class RoutingTests(TestCase):
    """
    Tests for AdminResource's pattern routes, body checks and RequestError.
    """

    def start(self, token: str | None = None) -> int:
        self.calls: list[Any] = []
        site = make_admin_factory(dict, token, reactor=reactor)
        resource = site.resource

        def record(name: str) -> Any:
            def handler(request: Any, **arguments: Any) -> Any:
                self.calls.append((name, arguments))
                return 200, {"route": name, "arguments": {k: v.decode() for k, v in arguments.items()}}

            return handler

        resource.add_route(b"GET", b"/things", record("list"))
        resource.add_route(b"GET", b"/things/special", record("special"))
        resource.add_pattern_route(b"GET", b"/things/{name}", record("one"))
        resource.add_pattern_route(b"DELETE", b"/things/{name}", record("delete"))
        resource.add_pattern_route(b"POST", b"/things/{name}/poke", record("poke"))

        def refuse(request: Any) -> Any:
            raise RequestError(409, "refused")

        def refuse_later(request: Any) -> Any:
            return fail(RequestError(418, "later"))

        def raw(request: Any) -> Any:
            return succeed(Raw(200, b"text/plain; charset=utf-8", b"hello\n"))

        def echo(request: Any) -> Any:
            return 200, read_arguments(request, ("host", "flag"))

        resource.add_route(b"GET", b"/refuse", refuse)
        resource.add_route(b"GET", b"/refuse-later", refuse_later)
        resource.add_route(b"GET", b"/raw", raw)
        resource.add_route(b"POST", b"/echo", echo)
        resource.add_route(b"DELETE", b"/echo", echo)
        return listen(self, site)

    def assertJSON(self, response: Any, status: int, body: Any) -> None:
        self.assertEqual((response.status, json.loads(response.body)), (status, body))
        self.assertEqual(response.header(b"content-type"), b"application/json")

    @inlineCallbacks
    def test_pattern_routes(self) -> Any:
        """
        A {name} segment matches one non-empty segment and is passed raw
        (still percent-encoded); exact routes win; other shapes are 404.
        """
        port = self.start()
        response = yield get(port, b"/things/a.example")
        self.assertJSON(response, 200, {"route": "one", "arguments": {"name": "a.example"}})
        response = yield get(port, b"/things/a%2Fb")
        self.assertJSON(response, 200, {"route": "one", "arguments": {"name": "a%2Fb"}})
        response = yield get(port, b"/things/special")
        self.assertJSON(response, 200, {"route": "special", "arguments": {}})
        response = yield get(port, b"/things/x/poke", method=b"POST")
        self.assertJSON(response, 200, {"route": "poke", "arguments": {"name": "x"}})
        for path in (b"/things/", b"/things/a/b", b"/things//poke", b"/things/x/poke/"):
            response = yield get(port, path)
            self.assertJSON(response, 404, {"message": "Not found"})

    @inlineCallbacks
    def test_pattern_method_not_allowed(self) -> Any:
        """
        A path matching a pattern with another method answers 405 with
        every method the patterns allow there.
        """
        port = self.start()
        response = yield get(port, b"/things/x", method=b"PUT")
        self.assertJSON(response, 405, {"message": "Method not allowed"})
        self.assertEqual(response.header(b"allow"), b"DELETE, GET, HEAD")
        response = yield get(port, b"/things/x/poke")
        self.assertEqual(response.header(b"allow"), b"POST")

    @inlineCallbacks
    def test_request_error(self) -> Any:
        """
        A handler raising RequestError, or failing its Deferred with one,
        answers its status and message; nothing is logged as an error.
        """
        port = self.start()
        response = yield get(port, b"/refuse")
        self.assertJSON(response, 409, {"message": "refused"})
        response = yield get(port, b"/refuse-later")
        self.assertJSON(response, 418, {"message": "later"})
        self.assertEqual(self.flushLoggedErrors(), [])

    @inlineCallbacks
    def test_raw_later(self) -> Any:
        """
        A Deferred firing with a Raw is written as it is.
        """
        port = self.start()
        response = yield get(port, b"/raw")
        self.assertEqual((response.status, response.body), (200, b"hello\n"))
        self.assertEqual(response.header(b"content-type"), b"text/plain; charset=utf-8")

    @inlineCallbacks
    def test_body_too_large(self) -> Any:
        """
        A body over 64 KiB answers 413, by Content-Length or counted
        (chunked), before the handler runs.
        """
        port = self.start()
        big = b"{" + b" " * MAX_BODY + b"}"
        response = yield get(port, b"/echo", method=b"POST", body=big,
                             headers=b"Content-Type: application/json\r\n")
        self.assertJSON(response, 413, {"message": "request body too large (at most 65536 bytes)"})
        chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(big), big)
        response = yield get(port, b"/echo", method=b"POST", body=b"",
                             headers=b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                             + chunked[:-2])
        self.assertEqual(response.status, 413)
        self.assertEqual(self.calls, [])

    @inlineCallbacks
    def test_unsupported_media_type(self) -> Any:
        """
        A non-empty body that is not JSON, a form or multipart answers 415;
        no Content-Type counts as unsupported too. An empty body needs no
        type.
        """
        port = self.start()
        for headers in (b"Content-Type: text/plain\r\n", b"", b"Content-Type: application/xml\r\n"):
            response = yield get(port, b"/echo", method=b"POST", body=b"host=a", headers=headers)
            self.assertEqual(response.status, 415)
            self.assertIn("unsupported content type", json.loads(response.body)["message"])
        response = yield get(port, b"/echo?host=q", method=b"POST")
        self.assertJSON(response, 200, {"host": "q"})

    @inlineCallbacks
    def test_arguments(self) -> Any:
        """
        read_arguments merges the query (undeclared names ignored) with a
        JSON object or form body (which wins); JSON keeps its types.
        """
        port = self.start()
        json_type = b"Content-Type: application/json; charset=utf-8\r\n"
        form_type = b"Content-Type: application/x-www-form-urlencoded\r\n"
        response = yield get(port, b"/echo?host=q&other=1", method=b"POST", body=b'{"flag": true}', headers=json_type)
        self.assertJSON(response, 200, {"host": "q", "flag": True})
        response = yield get(port, b"/echo?host=q", method=b"POST", body=b"host=b&flag=", headers=form_type)
        self.assertJSON(response, 200, {"host": "b", "flag": ""})
        response = yield get(port, b"/echo", method=b"DELETE", body=b"flag=1", headers=form_type)
        self.assertJSON(response, 200, {"flag": "1"})
        multipart = (b"--XX\r\nContent-Disposition: form-data; name=\"host\"\r\n\r\nm.example\r\n--XX--\r\n")
        response = yield get(port, b"/echo?flag=1", method=b"POST", body=multipart,
                             headers=b"Content-Type: multipart/form-data; boundary=XX\r\n")
        self.assertJSON(response, 200, {"host": "m.example", "flag": "1"})
        response = yield get(port, b"/echo", method=b"DELETE", body=multipart,
                             headers=b"Content-Type: multipart/form-data; boundary=XX\r\n")
        self.assertEqual(response.status, 415)

    @inlineCallbacks
    def test_bad_arguments(self) -> Any:
        """
        Invalid JSON, a JSON body that is not an object, an unknown body
        field (named) and non-UTF-8 form values answer 400.
        """
        port = self.start()
        json_type = b"Content-Type: application/json\r\n"
        form_type = b"Content-Type: application/x-www-form-urlencoded\r\n"
        cases = [
            (b"{nope", json_type, "request body is not valid JSON"),
            (b'["host"]', json_type, "request body must be a JSON object"),
            (b'"host"', json_type, "request body must be a JSON object"),
            (b'{"host": "a", "evil": 1}', json_type, 'unknown field in request body: "evil"'),
            (b"host=a&sneaky=1", form_type, 'unknown field in request body: "sneaky"'),
            (b"host=%ff", form_type, "query and form values must be UTF-8"),
        ]
        for body, headers, message in cases:
            response = yield get(port, b"/echo", method=b"POST", body=body, headers=headers)
            self.assertJSON(response, 400, {"message": message})

    @inlineCallbacks
    def test_token_on_patterns(self) -> Any:
        """
        Pattern routes need the token too, and a 401 comes before a 405.
        """
        port = self.start(token="s3cret")
        for method, path in [(b"GET", b"/things/x"), (b"PUT", b"/things/x"), (b"POST", b"/things/x/poke")]:
            response = yield get(port, path, method=method)
            self.assertJSON(response, 401, {"message": "Unauthorized"})
        response = yield get(port, b"/things/x", headers=b"Authorization: Bearer s3cret\r\n")
        self.assertEqual(response.status, 200)
        self.assertEqual(self.calls, [("one", {"name": b"x"})])


class LimitTests(TestCase):
    """
    Tests for the Admin listener's head checks and time limits, over real
    sockets: the token and the declared size are checked from the headers
    before any body is read, and a trickling client is cut off.
    """

    HUGE = b"POST /status HTTP/1.1\r\nHost: admin\r\nContent-Type: application/json\r\n" \
           b"Content-Length: 100000000000\r\n"

    def start(self, token: str | None = "s3cret", **limits: Any) -> int:
        site = make_admin_factory(dict, token, reactor=reactor, **limits)
        self.requests: list[Any] = []
        factory = site.requestFactory

        def recording(*args: Any) -> Any:
            request = factory(*args)
            self.requests.append(request)
            return request

        site.requestFactory = recording
        return listen(self, site)

    def assertBodyNeverRead(self) -> None:
        # Twisted makes the body's file (a temporary file for a length this
        # large) when it starts reading a body: none was made.
        self.assertTrue(self.requests)
        for request in self.requests:
            self.assertIsNone(request.content)

    @inlineCallbacks
    def test_huge_body_without_token(self) -> Any:
        """
        A request announcing a 100 GB body without the token answers 401
        from its head alone (the client sends no body at all) and the
        connection is closed; no body file is made.
        """
        port = self.start()
        response = yield exchange(port, self.HUGE + b"\r\n")
        self.assertEqual((response.status, json.loads(response.body)), (401, {"message": "Unauthorized"}))
        self.assertEqual(response.header(b"www-authenticate"), b'Bearer realm="kongacme"')
        self.assertEqual(response.header(b"connection"), b"close")
        self.assertBodyNeverRead()

    @inlineCallbacks
    def test_huge_body_with_token(self) -> Any:
        """
        With the token, the same request answers 413 from its head alone,
        in Kong's JSON shape; an expected-100-continue client is not told
        to go on.
        """
        port = self.start()
        for extra in (b"", b"Expect: 100-continue\r\n"):
            response = yield exchange(port, self.HUGE + b"Authorization: Bearer s3cret\r\n" + extra + b"\r\n")
            self.assertEqual((response.status, json.loads(response.body)),
                             (413, {"message": "request body too large (at most 65536 bytes)"}))
            self.assertEqual(response.header(b"content-type"), b"application/json")
            self.assertNotIn(b"100 Continue", response.raw)
        self.assertBodyNeverRead()

    @inlineCallbacks
    def test_refused_while_uploading(self) -> Any:
        """
        A client that keeps sending its body after the head (as curl does
        without ``Expect``) reads the whole 401 and a clean end: the channel
        half-closes and drops what still arrives (a lingering close) instead
        of closing with unread bytes, which makes the kernel reset the
        connection under the client's next write.
        """
        port = self.start()
        sent, received, error = yield deferToThread(upload_then_read, port, self.HUGE + b"\r\n", 32, 16384)
        self.assertIsNone(error, "the client's upload was reset after %d bytes" % (sent,))
        self.assertEqual(sent, 32 * 16384)
        response = parse_response(received)
        self.assertEqual((response.status, json.loads(response.body)), (401, {"message": "Unauthorized"}))
        self.assertBodyNeverRead()

    @inlineCallbacks
    def test_lingering_is_bounded(self) -> Any:
        """
        The lingering close drops at most LINGER_BYTES: a client that goes
        on uploading past them is cut off (reset), having had its answer.
        """
        port = self.start()
        chunks = LINGER_BYTES // 16384 + 64
        sent, received, error = yield deferToThread(upload_then_read, port, self.HUGE + b"\r\n", chunks, 16384)
        self.assertIsNotNone(error)
        self.assertLess(sent, chunks * 16384)
        self.assertEqual(parse_response(received).status, 401)

    @inlineCallbacks
    def test_head_without_token(self) -> Any:
        """
        A refused HEAD gets the headers of the 401 and no body.
        """
        port = self.start()
        response = yield exchange(port, b"HEAD /health HTTP/1.1\r\nHost: admin\r\n\r\n")
        self.assertEqual(response.status, 401)
        self.assertTrue(response.raw.endswith(b"\r\n\r\n"))

    @inlineCallbacks
    def test_trickled_head_cut_off(self) -> Any:
        """
        A client sending its request head one byte at a time is answered
        408 and closed once request_timeout has passed, although each byte
        would reset an idle timeout.
        """
        port = self.start(token=None, request_timeout=0.5)
        client = yield connect(port)
        client.trickle(b"GET /health HTTP/1.1\r\nHost: admin\r\nX-Slow: " + b"s" * 200 + b"\r\n\r\n", 0.05)
        raw = yield client.closed
        response = parse_response(raw)
        self.assertEqual((response.status, json.loads(response.body)),
                         (408, {"message": "request not received in time"}))

    @inlineCallbacks
    def test_trickled_body_cut_off(self) -> Any:
        """
        An authorised request whose body trickles in is cut off by the same
        deadline; the handler never runs.
        """
        port = self.start(request_timeout=0.5)
        client = yield connect(port)
        client.transport.write(b"POST /status HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer s3cret\r\n"
                               b"Content-Type: application/json\r\nContent-Length: 200\r\n\r\n")
        client.trickle(b"{" + b" " * 198 + b"}", 0.05)
        raw = yield client.closed
        self.assertEqual(parse_response(raw).status, 408)

    @inlineCallbacks
    def test_header_limits(self) -> Any:
        """
        Headers over max_header_bytes answer 431 in Kong's JSON shape.
        """
        port = self.start(token=None, max_header_bytes=1024)
        response = yield get(port, b"/health", headers=b"X-Big: " + b"a" * 2000 + b"\r\n")
        self.assertEqual((response.status, json.loads(response.body)),
                         (431, {"message": "request headers too large"}))

    @inlineCallbacks
    def test_reconfigure(self) -> Any:
        """
        site.reconfigure changes the limits for new connections; invalid
        values raise and keep the old settings.
        """
        site = make_admin_factory(dict, None, reactor=reactor)
        port = listen(self, site)
        self.assertEqual(site.reconfigure(request_timeout=0.3).request_timeout, 0.3)
        self.assertRaises(ValueError, site.reconfigure, request_timeout=0)
        self.assertRaises(TypeError, site.reconfigure, colour="blue")
        self.assertEqual(site.settings, AdminSettings(request_timeout=0.3))
        client = yield connect(port)
        client.trickle(b"GET /health HTTP/1.1\r\n" + b"X: y\r\n" * 100, 0.05)
        raw = yield client.closed
        self.assertEqual(parse_response(raw).status, 408)


class TruthyTests(SynchronousTestCase):
    """
    Tests for truthy.
    """

    def test_values(self) -> None:
        """
        JSON true, non-zero numbers and strings other than the "no"
        spellings are true (an empty value too, as a bare ?flag).
        """
        for value in (True, 1, "1", "true", "yes", "", "anything"):
            self.assertTrue(truthy(value), value)
        for value in (False, 0, None, "0", "false", "No", " off ", [], {}):
            self.assertFalse(truthy(value), value)


class AddPatternRouteTests(SynchronousTestCase):
    """
    Tests for AdminResource.add_pattern_route's argument check.
    """

    def test_relative(self) -> None:
        """
        A template not starting with / raises ValueError.
        """
        self.assertRaises(ValueError, AdminResource({}).add_pattern_route, b"GET", b"x/{y}", dict)


class MakeAdminFactoryTests(SynchronousTestCase):
    """
    Tests for make_admin_factory's argument checks.
    """

    def test_bad_token(self) -> None:
        """
        An empty or non-string token raises TypeError.
        """
        self.assertRaises(TypeError, make_admin_factory, dict, "", reactor=reactor)
        self.assertRaises(TypeError, make_admin_factory, dict, b"token", reactor=reactor)
