"""
Tests for kongacme.cli: the ``kongacme`` command against a real listening
Admin site (in-memory storage, fake renewal service and manager), the
command run in a thread (it is synchronous urllib) while the reactor
serves; one test runs it as a process.
"""

from __future__ import annotations

import io
import json
import os
import socket
import sys
from typing import Any

from twisted.internet.defer import inlineCallbacks, succeed
from twisted.internet.threads import deferToThread
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site

from kongacme.cli import run
from kongacme.renewal.state import RenewalState
from tests.test_web_admin_certificates import NOW, AdminWorld
from tests.test_web_support import listen

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class SucceedingManager:
    """A CertificateManager whose orders succeed."""

    def __init__(self) -> None:
        self.orders: list[str] = []

    def obtain(self, host: str, origin: str = "", force: bool = False) -> Any:
        self.orders.append(host)
        return succeed(None)


def closed_port(test_case: Any) -> int:
    """
    A 127.0.0.1 port that refuses connections for the rest of the test: a
    socket bound there without listening, so no other process (the tests
    run in parallel) can start listening on it meanwhile.
    """
    held = socket.socket()
    test_case.addCleanup(held.close)
    held.bind(("127.0.0.1", 0))
    return held.getsockname()[1]


class CliMixin:
    def start(self, token: str | None = None) -> str:
        self.world = AdminWorld(token)
        return "http://127.0.0.1:%d" % (listen(self, self.world.site),)

    def kongacme(self, *argv: str, env: dict | None = None) -> Any:
        """Run the command in a thread: Deferred firing with (exit code, stdout, stderr)."""
        out, err = io.StringIO(), io.StringIO()

        def call() -> tuple[int, str, str]:
            code = run(list(argv), out, err, env or {}, lambda: NOW)
            return code, out.getvalue(), err.getvalue()

        return deferToThread(call)


class CertsTests(CliMixin, TestCase):
    """
    Tests for ``kongacme certs``.
    """

    @inlineCallbacks
    def test_table(self) -> Any:
        """
        One row per stored certificate: host, issuer, not_after, days
        left (or "expired"), next renewal and last error.
        """
        admin = self.start()
        world = self.world
        world.store("a.example.test", world.issue("a.example.test"))
        world.store("old.example.test", world.issue("old.example.test", days_ago=100))
        world.renewal.tracked["a.example.test"] = RenewalState(
            "a.example.test", next_attempt=NOW + 3600, last_error="urn:ietf:params:acme:error:rateLimited: slow down"
        )
        code, out, err = yield self.kongacme("--admin", admin, "certs")
        self.assertEqual((code, err), (0, ""))
        lines = out.splitlines()
        self.assertEqual(lines[0].split(), ["HOST", "ISSUER", "NOT", "AFTER", "(UTC)", "DAYS", "LEFT",
                                            "NEXT", "RENEWAL", "LAST", "ERROR"])
        self.assertEqual(len(lines), 3)
        a = lines[1].split()
        self.assertEqual(a[0], "a.example.test")
        self.assertEqual(" ".join(a[1:5]), "kongacme admin test CA")
        self.assertEqual(a[5:8], ["2026-01-06", "08:53:20", "89"])
        self.assertEqual(a[8], "2025-10-09T09:53:20Z")
        self.assertIn("rateLimited: slow down", lines[1])
        old = lines[2].split()
        self.assertEqual((old[0], old[7], old[8], old[9]), ("old.example.test", "expired", "-", "-"))

    @inlineCallbacks
    def test_invalid_only_and_json(self) -> Any:
        """
        --invalid-only lists the invalid ones; --json prints the Admin
        API's answer.
        """
        admin = self.start()
        world = self.world
        world.store("a.example.test", world.issue("a.example.test"))
        world.store("old.example.test", world.issue("old.example.test", days_ago=100))
        code, out, err = yield self.kongacme("--admin", admin, "certs", "--invalid-only", "--json")
        self.assertEqual(code, 0)
        data = json.loads(out)["data"]
        self.assertEqual([entry["host"] for entry in data], ["old.example.test"])
        self.assertFalse(data[0]["valid"])

    @inlineCallbacks
    def test_empty(self) -> Any:
        """
        Nothing stored prints "no certificates".
        """
        admin = self.start()
        code, out, err = yield self.kongacme("--admin", admin, "certs")
        self.assertEqual((code, out), (0, "no certificates\n"))


class IssueRenewTests(CliMixin, TestCase):
    """
    Tests for ``kongacme issue`` and ``kongacme renew``.
    """

    @inlineCallbacks
    def test_issue(self) -> Any:
        """
        issue HOST posts to /acme and prints Kong's message.
        """
        admin = self.start()
        self.world.manager = SucceedingManager()
        code, out, err = yield self.kongacme("--admin", admin, "issue", "new.example.test")
        self.assertEqual((code, out, err), (0, "certificate for host new.example.test is created\n", ""))
        self.assertEqual(self.world.manager.orders, ["new.example.test"])

    @inlineCallbacks
    def test_issue_refused(self) -> Any:
        """
        A refused order exits 1 with the daemon's status and message on
        stderr.
        """
        admin = self.start()
        code, out, err = yield self.kongacme("--admin", admin, "issue", "evil.test")
        self.assertEqual((code, out), (1, ""))
        self.assertEqual(err, "kongacme: HTTP 400: host evil.test is not included in plugin config.domains\n")

    @inlineCallbacks
    def test_renew_all(self) -> Any:
        """
        renew without a host starts a pass (PATCH /acme).
        """
        admin = self.start()
        code, out, err = yield self.kongacme("--admin", admin, "renew")
        self.assertEqual((code, out), (0, "Renewal process started successfully\n"))
        self.assertEqual(self.world.renewal.passes, 1)

    @inlineCallbacks
    def test_renew_one(self) -> Any:
        """
        renew HOST renews that host now; an unmanaged host exits 1.
        """
        admin = self.start()
        world = self.world
        world.renewal.tracked["a.example.test"] = RenewalState("a.example.test")
        world.renewal.renew_result = world.issue("a.example.test")
        code, out, err = yield self.kongacme("--admin", admin, "renew", "a.example.test")
        self.assertEqual((code, out), (0, "certificate for host a.example.test is renewed\n"))
        self.assertEqual(world.renewal.renewals, ["a.example.test"])
        code, out, err = yield self.kongacme("--admin", admin, "renew", "b.example.test")
        self.assertEqual(code, 1)
        self.assertIn("HTTP 404: host b.example.test is not managed", err)


class TokenTests(CliMixin, TestCase):
    """
    Tests for --token and KONGACME_ADMIN_TOKEN.
    """

    @inlineCallbacks
    def test_token(self) -> Any:
        """
        Without the token the command exits 1 saying how to give it; with
        --token or the environment variable it works; --token wins.
        """
        admin = self.start(token="s3cret")
        code, out, err = yield self.kongacme("--admin", admin, "renew")
        self.assertEqual(code, 1)
        self.assertEqual(err, "kongacme: HTTP 401: Unauthorized (give --token or set KONGACME_ADMIN_TOKEN)\n")
        code, out, err = yield self.kongacme("--admin", admin, "--token", "s3cret", "renew")
        self.assertEqual(code, 0)
        code, out, err = yield self.kongacme("--admin", admin, "renew", env={"KONGACME_ADMIN_TOKEN": "s3cret"})
        self.assertEqual(code, 0)
        code, out, err = yield self.kongacme("--admin", admin, "--token", "wrong", "renew",
                                             env={"KONGACME_ADMIN_TOKEN": "s3cret"})
        self.assertEqual(code, 1)
        self.assertEqual(self.world.renewal.passes, 2)

    @inlineCallbacks
    def test_admin_from_environment(self) -> Any:
        """
        KONGACME_ADMIN names the Admin API when --admin is not given.
        """
        admin = self.start()
        code, out, err = yield self.kongacme("renew", env={"KONGACME_ADMIN": admin})
        self.assertEqual(code, 0)


class UnreachableTests(CliMixin, TestCase):
    """
    Tests for an Admin API that is down or is not one.
    """

    @inlineCallbacks
    def test_down(self) -> Any:
        """
        Connection refused exits 2 with a clear message, for every Admin
        command.
        """
        url = "http://127.0.0.1:%d" % (closed_port(self),)
        for argv in (["certs"], ["issue", "a.test"], ["renew"], ["renew", "a.test"]):
            code, out, err = yield self.kongacme("--admin", url, *argv)
            self.assertEqual((code, out), (2, ""))
            self.assertTrue(err.startswith("kongacme: cannot reach the Admin API at %s: " % (url,)), err)
            self.assertIn("refused", err)

    @inlineCallbacks
    def test_not_the_admin_api(self) -> Any:
        """
        Something that answers HTML (not the Admin API) exits 2 too.
        """
        port = listen(self, Site(Resource()))
        code, out, err = yield self.kongacme("--admin", "http://127.0.0.1:%d" % (port,), "certs")
        self.assertEqual(code, 2)
        self.assertIn("not the Admin API's JSON", err)

    @inlineCallbacks
    def test_process(self) -> Any:
        """
        ``python -m kongacme.cli`` (what the console script runs) exits 2
        with the message on stderr when the Admin API is down.
        """
        url = "http://127.0.0.1:%d" % (closed_port(self),)
        out, err, code = yield getProcessOutputAndValue(
            sys.executable, ["-m", "kongacme.cli", "--admin", url, "certs"], env=dict(os.environ), path=ROOT
        )
        self.assertEqual((code, out), (2, b""))
        self.assertIn(b"cannot reach the Admin API", err)


class CheckConfigTests(SynchronousTestCase):
    """
    Tests for ``kongacme check-config``.
    """

    def check(self, text: str) -> tuple[int, str, str]:
        path = self.mktemp() + ".yaml"
        with open(path, "w") as f:
            f.write(text)
        out, err = io.StringIO(), io.StringIO()
        code = run(["check-config", path], out, err, {}, lambda: NOW)
        return code, out.getvalue().replace(path, "FILE"), err.getvalue().replace(path, "FILE")

    def test_ok(self) -> None:
        """
        A valid file prints "FILE: OK" and exits 0; so does the shipped
        example.
        """
        self.assertEqual(self.check("proxy:\n  connect_timeout: 3\n"), (0, "FILE: OK\n", ""))
        out, err = io.StringIO(), io.StringIO()
        example = os.path.join(ROOT, "etc", "kongacme.example.yaml")
        self.assertEqual(run(["check-config", example], out, err, {}, lambda: NOW), 0)
        self.assertTrue(out.getvalue().endswith("kongacme.example.yaml: OK\n"))

    def test_problems(self) -> None:
        """
        An invalid file exits 1 printing every problem with its field path.
        """
        code, out, err = self.check("acme:\n  account_email: nope\n  rsa_key_size: 1000\n"
                                    "  tos_accepted: true\nproxy:\n  connect_timeout: -1\n")
        self.assertEqual((code, out), (1, ""))
        lines = err.splitlines()
        self.assertEqual(lines[0], "FILE: 3 problem(s)")
        self.assertEqual(sorted(lines[1:]), [
            "  acme.account_email: must be an email address",
            "  acme.rsa_key_size: must be one of 2048, 3072, 4096",
            "  proxy.connect_timeout: must be greater than 0",
        ])

    def test_missing(self) -> None:
        """
        A missing file exits 1 saying so.
        """
        out, err = io.StringIO(), io.StringIO()
        self.assertEqual(run(["check-config", "/nonexistent/k.yaml"], out, err, {}, lambda: NOW), 1)
        self.assertIn("not found", err.getvalue())


class UsageTests(SynchronousTestCase):
    """
    Tests for the command line itself.
    """

    def test_usage(self) -> None:
        """
        No command or an unknown one exits 64 with the error, then the
        usage, on stderr; --help prints help on stdout and exits 0.
        """
        for argv in ([], ["bogus"], ["issue"], ["--timeout", "x", "certs"]):
            out, err = io.StringIO(), io.StringIO()
            self.assertEqual(run(argv, out, err, {}, lambda: NOW), 64, argv)
            self.assertEqual(out.getvalue(), "")
            first, rest = err.getvalue().split("\n", 1)
            self.assertRegex(first, r"^kongacme( issue)?: error: ", err.getvalue())
            self.assertTrue(rest.startswith("usage: kongacme"), err.getvalue())
        out, err = io.StringIO(), io.StringIO()
        self.assertEqual(run(["--help"], out, err, {}, lambda: NOW), 0)
        self.assertIn("check-config", out.getvalue())
        self.assertEqual(err.getvalue(), "")
