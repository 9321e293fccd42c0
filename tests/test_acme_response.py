"""
Tests for kongacme.acme.response.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from kongacme.acme.response import AcmeResponse, problem_from_json
from kongacme.errors import AcmeTransportError


class ResponseTests(SynchronousTestCase):
    """
    Tests for AcmeResponse.
    """

    def response(self, headers: dict[str, list[str]], body: bytes = b"") -> AcmeResponse:
        return AcmeResponse(url="https://ca.test/a/b", code=200, headers=Headers(headers), body=body)

    def test_links(self) -> None:
        """
        Every Link with the relation is returned, made absolute, from
        several headers and comma-separated entries alike.
        """
        response = self.response(
            {
                "Link": [
                    '<https://ca.test/cert/1/1>;rel="alternate", </dir>;rel="index"',
                    "<alt/2> ; rel=alternate",
                    '<https://ca.test/x>; rel="up alternate"',
                ]
            }
        )
        self.assertEqual(
            response.links("alternate"),
            ["https://ca.test/cert/1/1", "https://ca.test/a/alt/2", "https://ca.test/x"],
        )
        self.assertEqual(response.links("index"), ["https://ca.test/dir"])
        self.assertEqual(response.links("up"), ["https://ca.test/x"])
        self.assertEqual(self.response({}).links("alternate"), [])

    def test_location(self) -> None:
        """
        Location is made absolute; absent, it is None.
        """
        self.assertEqual(self.response({"Location": ["/order/1"]}).location, "https://ca.test/order/1")
        self.assertIsNone(self.response({}).location)

    def test_json(self) -> None:
        """
        json() gives a JSON object, and AcmeTransportError for anything else.
        """
        self.assertEqual(self.response({}, b'{"a": 1}').json(), {"a": 1})
        for body in (b"<html>", b"[1]", b""):
            error = self.assertRaises(AcmeTransportError, self.response({}, body).json)
            self.assertEqual(error.url, "https://ca.test/a/b")

    def test_content_type(self) -> None:
        """
        The media type comes without parameters, lower-cased.
        """
        self.assertEqual(
            self.response({"Content-Type": ["Application/JSON; charset=utf-8"]}).content_type, "application/json"
        )


class ProblemTests(SynchronousTestCase):
    """
    Tests for problem_from_json.
    """

    def test_subproblems(self) -> None:
        """
        Type, detail, status and subproblems (with their identifiers) are
        kept.
        """
        problem = problem_from_json(
            {
                "type": "urn:ietf:params:acme:error:malformed",
                "detail": "Some of the identifiers requested were rejected",
                "status": 400,
                "subproblems": [
                    {
                        "type": "urn:ietf:params:acme:error:rejectedIdentifier",
                        "detail": "This CA will not issue for this name",
                        "identifier": {"type": "dns", "value": "bad.test"},
                    },
                    "not a problem",
                ],
            }
        )
        self.assertEqual((problem.type, problem.status), ("urn:ietf:params:acme:error:malformed", 400))
        [sub] = problem.subproblems
        self.assertEqual(sub.type, "urn:ietf:params:acme:error:rejectedIdentifier")
        self.assertEqual(sub.detail, "bad.test: This CA will not issue for this name")
