"""
Tests for kongacme.web.admin, over real sockets on 127.0.0.1.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase, TestCase

from kongacme.web.admin import make_admin_factory
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
        Unknown paths, and known paths with another method, answer 404
        {"message": "Not found"}.
        """
        port = self.start()
        for method, path in [(b"GET", b"/"), (b"GET", b"/health/"), (b"POST", b"/health"), (b"DELETE", b"/status")]:
            response = yield get(port, path, method=method)
            self.assertJSON(response, 404, {"message": "Not found"})

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
