"""Tests for kongacme.issuance.stored's names a stored certificate is served for."""

from twisted.trial.unittest import SynchronousTestCase

from kongacme.issuance.stored import served_names
from kongacme.testing import TestCA


class ServedNamesTests(SynchronousTestCase):
    """Tests for served_names()."""

    def test_wildcard_with_base_name(self) -> None:
        """A wildcard entry whose certificate holds its base name serves both; one without serves itself."""
        ca = TestCA.create("served names CA")
        both = ca.issue(["*.example.test", "example.test"], days=1)
        only = ca.issue(["*.example.test"], days=1)
        self.assertEqual(served_names("*.example.test", both), ["*.example.test", "example.test"])
        self.assertEqual(served_names("*.example.test", only), ["*.example.test"])
        self.assertEqual(served_names("example.test", both), ["example.test"])
