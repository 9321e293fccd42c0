"""
Tests for kongacme.web.admin, over real sockets on 127.0.0.1.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import fail, inlineCallbacks, succeed
from twisted.trial.unittest import SynchronousTestCase, TestCase

from kongacme.web.admin import MAX_BODY, AdminResource, RequestError, make_admin_factory, read_arguments, truthy
from kongacme.web.responses import Raw
from tests.test_web_support import get, listen


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
