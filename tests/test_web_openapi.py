"""
Tests for kongacme.web.openapi: the document is valid OpenAPI 3.0, lists
exactly the routes the Admin site serves, and the live Admin API (fake
renewal service, fake issuer and manager, in-memory storage) conforms to
it under schemathesis' generated requests.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from kongacme.web.openapi import document
from kongacme.web.responses import Raw
from tests.test_web_admin_certificates import AdminWorld
from tests.test_web_support import get, listen

#: Generated requests per operation and generation mode (positive and
#: negative): bounded so the whole fuzz takes a few seconds.
MAX_EXAMPLES = 12
TOKEN = "fuzz-token"


def full_world(token: str | None = None) -> AdminWorld:
    """
    An AdminWorld with stand-ins for ``GET /metrics`` and ``GET /``
    (installed by kongacme.web.visibility in the daemon), answering what
    the document says they answer.
    """
    world = AdminWorld(token)
    resource = world.site.resource
    resource.add_route(b"GET", b"/metrics", lambda request: Raw(200, b"text/plain; version=0.0.4", b"up 1\n"))
    resource.add_route(b"GET", b"/", lambda request: Raw(200, b"text/html; charset=utf-8", b"<html></html>"))
    world.store("a.example.test", world.issue("a.example.test"))
    world.store("old.example.test", world.issue("old.example.test", days_ago=100))
    return world


class DocumentTests(SynchronousTestCase):
    """
    Tests for document.
    """

    def test_valid(self) -> None:
        """
        The document is valid OpenAPI 3.0 (openapi-spec-validator) and
        declares the bearer scheme, optional (a token is only required
        when admin.token is set).
        """
        from openapi_spec_validator import validate

        doc = document()
        validate(doc)
        self.assertTrue(doc["openapi"].startswith("3.0"))
        self.assertEqual(doc["components"]["securitySchemes"]["bearer"], {
            "type": "http", "scheme": "bearer",
            "description": doc["components"]["securitySchemes"]["bearer"]["description"],
        })
        self.assertEqual(doc["security"], [{"bearer": []}, {}])

    def test_every_route(self) -> None:
        """
        The document's operations are exactly the Admin site's routes, and
        every operation documents 401.
        """
        resource = full_world().site.resource
        served = {(method.decode().lower(), path.decode()) for method, path in resource._routes}
        served |= {(method.decode().lower(), template.decode()) for method, template in resource._patterns}
        doc = document()
        documented = {
            (method, path)
            for path, item in doc["paths"].items()
            for method in item
            if method != "parameters"
        }
        self.assertEqual(documented, served)
        for path, item in doc["paths"].items():
            for method, operation in item.items():
                if method != "parameters":
                    self.assertIn("401", operation["responses"], (method, path))

    def test_daemon_routes(self) -> None:
        """
        The daemon's Admin site serves exactly the documented operations
        (a route added without documenting it fails here).
        """
        from twisted.internet import reactor

        from kongacme.config import parse_config
        from kongacme.service import DaemonService

        resource = DaemonService(reactor, parse_config({}, self.mktemp())).admin_factory.resource
        served = {(method.decode().lower(), path.decode()) for method, path in resource._routes}
        served |= {(method.decode().lower(), template.decode()) for method, template in resource._patterns}
        documented = {
            (method, path) for path, item in document()["paths"].items() for method in item if method != "parameters"
        }
        self.assertEqual(served, documented)

    def test_copy(self) -> None:
        """
        Each call returns a fresh copy.
        """
        doc = document()
        doc["paths"].clear()
        self.assertIn("/acme", document()["paths"])


class ServedTests(TestCase):
    """
    Tests for GET /openapi.json.
    """

    @inlineCallbacks
    def test_served(self) -> Any:
        """
        GET /openapi.json answers the document as JSON.
        """
        port = listen(self, AdminWorld().site)
        response = yield get(port, b"/openapi.json")
        self.assertEqual(response.status, 200)
        self.assertEqual(response.header(b"content-type"), b"application/json")
        self.assertEqual(json.loads(response.body), document())


def fuzz(base_url: str, token: str, max_examples: int) -> list[str]:
    """
    Load the schema from the live ``/openapi.json`` and send every
    operation ``max_examples`` generated requests per generation mode,
    checking each answer (no 5xx; status, content type, headers and body
    as documented). Runs in a thread: schemathesis is synchronous.

    :return: one line per operation and mode that failed (empty: all good).
    """
    import hypothesis
    import hypothesis.errors
    import requests
    import schemathesis
    from schemathesis.checks import not_a_server_error
    from schemathesis.generation.modes import GenerationMode
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_headers_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    auth = {"Authorization": "Bearer " + token}
    schema = schemathesis.openapi.from_url(base_url + "/openapi.json", headers=auth, timeout=10)
    checks = [not_a_server_error, status_code_conformance, content_type_conformance,
              response_headers_conformance, response_schema_conformance]
    session = requests.Session()
    session.headers.update(auth)
    failures: list[str] = []
    operations: list[str] = []
    try:
        for result in schema.get_all_operations():
            operation = result.ok()
            operations.append(operation.label)
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

                @hypothesis.settings(
                    max_examples=max_examples,
                    deadline=None,
                    database=None,
                    derandomize=True,
                    phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
                    suppress_health_check=list(hypothesis.HealthCheck),
                )
                @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
                def check(case: Any) -> None:
                    response = case.call(base_url=base_url, session=session, timeout=10)
                    case.validate_response(response, checks=checks)

                try:
                    check()
                except hypothesis.errors.Unsatisfiable:
                    # Nothing to make invalid (no parameters, no body).
                    if mode is GenerationMode.POSITIVE:
                        raise
                except (Exception, BaseExceptionGroup) as e:
                    failures.append("%s (%s): %s" % (operation.label, mode.value, e))
    finally:
        session.close()
    # schemathesis leaves out the operation serving the schema it loaded
    # (GET /openapi.json, tested by ServedTests).
    expected = sum(len([m for m in item if m != "parameters"]) for item in document()["paths"].values()) - 1
    if len(operations) != expected:
        failures.append("schemathesis saw %d operations, not %d: %s" % (len(operations), expected, operations))
    return failures


class FuzzTests(TestCase):
    """
    Tests for the live Admin API against its document, with schemathesis.
    """

    timeout = 120

    @inlineCallbacks
    def test_fuzz(self) -> Any:
        """
        Generated valid and invalid requests to every operation (with the
        token) get no 5xx, and every answer's status, content type and body
        are as documented.
        """
        world = full_world(TOKEN)
        port = listen(self, world.site)
        failures = yield deferToThread(fuzz, "http://127.0.0.1:%d" % (port,), TOKEN, MAX_EXAMPLES)
        self.assertEqual(failures, [], "\n\n".join(failures))
        self.flushLoggedErrors()
