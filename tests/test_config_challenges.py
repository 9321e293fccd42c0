"""
Tests for kongacme.config.challenges: ``issuance.challenge_types``,
``issuance.dns01`` and ``issuance.wildcard``, each problem reported with
its field path.
"""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from kongacme.config import parse_config
from kongacme.errors import ConfigError

SECRET = "c2VjcmV0LXNlY3JldC1zZWNyZXQ="
DNS01 = {"server": "127.0.0.1:5353", "tsig_key_name": "acme-key", "tsig_secret": SECRET}


class ChallengeConfigTests(SynchronousTestCase):
    """Tests for the challenge settings of ``issuance``."""

    def problems(self, issuance: dict) -> list:
        with self.assertRaises(ConfigError) as raised:
            parse_config({"issuance": issuance}, self.mktemp())
        return raised.exception.problems

    def test_defaults(self) -> None:
        """By default only http-01 is answered, without dns01 or wildcards."""
        issuance = parse_config({}, ".").issuance
        self.assertEqual((issuance.challenge_types, issuance.dns01, issuance.wildcard), (("http-01",), None, False))

    def test_dns01_parsed(self) -> None:
        """A full dns01 section: server split, defaults filled, zone normalised."""
        issuance = parse_config(
            {"issuance": {"challenge_types": ["dns-01", "http-01"], "wildcard": True,
                          "dns01": dict(DNS01, zone="Example.TEST.", ttl=30, propagation_timeout=5)}}, "."
        ).issuance
        self.assertEqual(issuance.challenge_types, ("dns-01", "http-01"))
        self.assertEqual(issuance.dns01.server, ("127.0.0.1", 5353))
        self.assertEqual(issuance.dns01.tsig_algorithm, "hmac-sha256")
        self.assertEqual((issuance.dns01.zone, issuance.dns01.ttl), ("example.test", 30))
        self.assertEqual(issuance.dns01.secret_text(), SECRET)

    def test_server_default_port(self) -> None:
        """A server without a port is on port 53 (IPv6 too)."""
        for given, expected in (("ns1.example.test", ("ns1.example.test", 53)), ("::1", ("::1", 53)),
                                ("[::1]:5300", ("::1", 5300))):
            dns01 = parse_config({"issuance": {"dns01": dict(DNS01, server=given)}}, ".").issuance.dns01
            self.assertEqual(dns01.server, expected)

    def test_secret_file(self) -> None:
        """tsig_secret_file is read and checked at load."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(SECRET + "\n")
        dns01 = dict(DNS01, tsig_secret=None, tsig_secret_file=os.path.abspath(path))
        parsed = parse_config({"issuance": {"challenge_types": ["dns-01"], "dns01": dns01}}, ".").issuance.dns01
        self.assertEqual(parsed.secret_text(), SECRET)
        with open(path, "w") as f:
            f.write("not base64!")
        self.assertEqual(self.problems({"dns01": dns01}),
                         [("issuance.dns01.tsig_secret_file", "file content: not base64")])

    def test_tls_alpn(self) -> None:
        """
        tls-alpn-01 is accepted, alone and with an empty plain-HTTP
        listener list (a deployment where only 443 is reachable).
        """
        parsed = parse_config({"listen": {"http": []}, "issuance": {"challenge_types": ["tls-alpn-01"]}}, ".")
        self.assertEqual((parsed.issuance.challenge_types, parsed.listen.http), (("tls-alpn-01",), ()))

    def test_bad_challenge_types(self) -> None:
        """Unknown names, duplicates and the empty list are refused."""
        self.assertEqual(self.problems({"challenge_types": ["dns-02"]}),
                         [("issuance.challenge_types[0]", "must be one of http-01, tls-alpn-01, dns-01")])
        self.assertEqual(self.problems({"challenge_types": ["http-01", "http-01"]}),
                         [("issuance.challenge_types", "lists a challenge type twice")])
        self.assertEqual(self.problems({"challenge_types": []}), [("issuance.challenge_types", "must not be empty")])

    def test_dns01_required(self) -> None:
        """dns-01 in challenge_types needs a dns01 section."""
        self.assertEqual(self.problems({"challenge_types": ["dns-01"]}),
                         [("issuance.dns01", "required when issuance.challenge_types includes dns-01")])

    def test_wildcard_needs_dns01(self) -> None:
        """wildcard: true without dns-01 in challenge_types is a config error."""
        self.assertEqual(
            self.problems({"wildcard": True, "dns01": DNS01}),
            [("issuance.wildcard",
              "wildcard certificates need dns-01 in issuance.challenge_types (only dns-01 validates a wildcard)")],
        )

    def test_dns01_field_errors(self) -> None:
        """Every dns01 field is checked, each problem with its path."""
        problems = self.problems({"challenge_types": ["dns-01"], "dns01": {
            "server": "a b", "tsig_algorithm": "hmac-md5", "tsig_secret": "!!", "zone": "-bad-", "ttl": 0,
            "propagation_timeout": 0, "extra": 1,
        }})
        paths = sorted(path for path, _ in problems)
        self.assertEqual(paths, sorted([
            "issuance.dns01.extra", "issuance.dns01.server", "issuance.dns01.tsig_key_name",
            "issuance.dns01.tsig_algorithm", "issuance.dns01.zone", "issuance.dns01.ttl",
            "issuance.dns01.propagation_timeout",
        ]))

    def test_secret_problems(self) -> None:
        """Neither or both of tsig_secret and tsig_secret_file, or a secret that is not base64."""
        self.assertEqual(self.problems({"dns01": dict(DNS01, tsig_secret=None)}),
                         [("issuance.dns01.tsig_secret", "required (or tsig_secret_file)")])
        self.assertEqual(self.problems({"dns01": dict(DNS01, tsig_secret_file=__file__)}),
                         [("issuance.dns01.tsig_secret", "set tsig_secret or tsig_secret_file, not both")])
        self.assertEqual(self.problems({"dns01": dict(DNS01, tsig_secret="not base64!")}),
                         [("issuance.dns01.tsig_secret", "not base64")])
        self.assertEqual(self.problems({"dns01": dict(DNS01, tsig_secret=None, tsig_secret_file="/nonexistent/secret")}),
                         [("issuance.dns01.tsig_secret_file", "file not found: /nonexistent/secret")])
