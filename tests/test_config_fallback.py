"""
Tests for kongacme.config.fallback: ``issuance.fallback_issuers``, each
problem reported with its field path.
"""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from kongacme.config import parse_config
from kongacme.config.fallback import FallbackIssuerConfig
from kongacme.errors import ConfigError

ACME = {"account_email": "ops@example.com", "api_uri": "https://ca-one.test/dir"}


class FallbackIssuersConfigTests(SynchronousTestCase):
    """Tests for ``issuance.fallback_issuers``."""

    def parse(self, fallbacks: object, acme: object = ACME) -> object:
        data: dict = {"issuance": {"fallback_issuers": fallbacks}}
        if acme is not None:
            data["acme"] = acme
        return parse_config(data, ".")

    def problems(self, fallbacks: object, acme: object = ACME) -> list:
        with self.assertRaises(ConfigError) as raised:
            self.parse(fallbacks, acme)
        return raised.exception.problems

    def test_default_none(self) -> None:
        """Without the setting there are no fallback CAs."""
        self.assertEqual(parse_config({"acme": ACME}, ".").issuance.fallback_issuers, ())

    def test_parsed(self) -> None:
        """Each entry becomes a FallbackIssuerConfig; a bare host gets /directory; unset fields stay None."""
        bundle = self.mktemp()
        with open(bundle, "w") as f:
            f.write("x")
        config = self.parse(
            [
                {"api_uri": "https://ca-two.test"},
                {"api_uri": "https://acme.zerossl.com/v2/DV90", "account_email": "z@example.com",
                 "eab_kid": "kid-1", "eab_hmac_key": "c2VjcmV0", "ca_bundle": bundle},
            ]
        )
        self.assertEqual(
            config.issuance.fallback_issuers,
            (
                FallbackIssuerConfig(api_uri="https://ca-two.test/directory"),
                FallbackIssuerConfig(api_uri="https://acme.zerossl.com/v2/DV90", account_email="z@example.com",
                                     eab_kid="kid-1", eab_hmac_key="c2VjcmV0", ca_bundle=os.path.abspath(bundle)),
            ),
        )

    def test_api_uri_required(self) -> None:
        """An entry without api_uri is refused, naming the entry."""
        self.assertIn(("issuance.fallback_issuers[0].api_uri", "required"), self.problems([{}]))

    def test_bad_values(self) -> None:
        """A non-URL, a bad email, a non-base64url key and a missing bundle are each named."""
        problems = dict(
            self.problems(
                [{"api_uri": "ftp://x", "account_email": "nobody", "eab_kid": "k", "eab_hmac_key": "not base64!",
                  "ca_bundle": "/nonexistent/bundle.pem"}]
            )
        )
        self.assertEqual(
            sorted(problems),
            ["issuance.fallback_issuers[0].account_email", "issuance.fallback_issuers[0].api_uri",
             "issuance.fallback_issuers[0].ca_bundle", "issuance.fallback_issuers[0].eab_hmac_key"],
        )
        self.assertEqual(problems["issuance.fallback_issuers[0].api_uri"], "must be an http:// or https:// URL")

    def test_eab_halves(self) -> None:
        """eab_kid without eab_hmac_key (and the reverse) is refused."""
        self.assertIn(
            ("issuance.fallback_issuers[0].eab_hmac_key", "required when eab_kid is set"),
            self.problems([{"api_uri": "https://ca-two.test/dir", "eab_kid": "k"}]),
        )
        self.assertIn(
            ("issuance.fallback_issuers[0].eab_kid", "required when eab_hmac_key is set"),
            self.problems([{"api_uri": "https://ca-two.test/dir", "eab_hmac_key": "c2VjcmV0"}]),
        )

    def test_primary_repeated(self) -> None:
        """A fallback that is the primary's directory is refused (trailing slash and case aside)."""
        self.assertIn(
            ("issuance.fallback_issuers[0].api_uri", "https://CA-ONE.test/dir/ is already acme.api_uri"),
            self.problems([{"api_uri": "https://CA-ONE.test/dir/"}]),
        )

    def test_duplicate(self) -> None:
        """The same fallback listed twice is refused at its second place."""
        self.assertIn(
            ("issuance.fallback_issuers[1].api_uri",
             "https://ca-two.test/dir is already issuance.fallback_issuers[0].api_uri"),
            self.problems([{"api_uri": "https://ca-two.test/dir"}, {"api_uri": "https://ca-two.test/dir"}]),
        )

    def test_needs_acme(self) -> None:
        """Fallback CAs without an acme section (no primary) are refused."""
        self.assertIn(
            ("issuance.fallback_issuers", "needs an acme section (the primary CA)"),
            self.problems([{"api_uri": "https://ca-two.test/dir"}], acme=None),
        )

    def test_not_a_list(self) -> None:
        """fallback_issuers must be a list of mappings."""
        self.assertIn(("issuance.fallback_issuers", "must be a list"), self.problems({"api_uri": "https://x.test"}))
