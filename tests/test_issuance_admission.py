"""
Tests for kongacme.issuance.admission.
"""

from twisted.trial.unittest import SynchronousTestCase

from kongacme.issuance.admission import Admission


class AdmissionTests(SynchronousTestCase):
    """
    Tests for Admission.
    """

    def test_exact_and_wildcard_any_depth(self):
        """Exact names match; *.x matches any subdomain depth but not the apex."""
        admission = Admission(["api.example.com", "*.alpha.test"])
        self.assertTrue(admission.admits("api.example.com"))
        self.assertTrue(admission.admits("API.Example.COM"))
        self.assertTrue(admission.admits("a.alpha.test"))
        self.assertTrue(admission.admits("a.b.c.alpha.test"))
        self.assertFalse(admission.admits("alpha.test"))
        self.assertFalse(admission.admits("www.example.com"))

    def test_dots_literal(self):
        """A wildcard suffix is matched on label boundaries (Kong bug #7834)."""
        admission = Admission(["*.alpha.x"])
        self.assertFalse(admission.admits("abc.gw-alpha.x"))
        self.assertFalse(admission.admits("abcalpha.x"))

    def test_allow_any_domain(self):
        """allow_any_domain admits every valid name, ignoring domains."""
        admission = Admission(["only.test"], allow_any_domain=True)
        self.assertTrue(admission.admits("anything.example"))

    def test_never_ip(self):
        """IP addresses are never admitted, even with allow_any_domain."""
        admission = Admission(allow_any_domain=True)
        for host in ("127.0.0.1", "10.1.2.3", "::1", "1.2.3"):
            self.assertFalse(admission.admits(host), host)
        self.assertEqual(admission.reason("127.0.0.1"), "IP addresses cannot get certificates here")

    def test_invalid_names(self):
        """No name, empty labels and bad characters are refused with a reason."""
        admission = Admission(allow_any_domain=True)
        self.assertEqual(admission.reason(None), "no host name")
        for host in ("", "a..b", "a b.test", "x" * 300):
            self.assertEqual(admission.reason(host), "not a valid host name", host)

    def test_kong_message(self):
        """A host outside domains gets Kong's wording."""
        self.assertEqual(Admission(["a.test"]).reason("b.test"), "host is not included in plugin config.domains")

    def test_trailing_dot(self):
        """
        A fully qualified name (one trailing dot) is the name without it,
        in domains and in the host asked about.
        """
        admission = Admission(["dot.demo.test.", "*.wild.test."])
        for host in ("dot.demo.test", "dot.demo.test.", "DOT.demo.test.", "a.wild.test.", "a.wild.test"):
            self.assertTrue(admission.admits(host), host)
        self.assertFalse(admission.admits("dot.demo.test.."))
        self.assertFalse(admission.admits("wild.test."))

    def test_underscore_refused(self):
        """
        A name with an underscore label is refused with the reason, even
        with allow_any_domain or when domains match it: a CA would refuse
        it as malformed, after spending a rate-limit slot on it.
        """
        for admission in (Admission(allow_any_domain=True), Admission(["*.demo.test"]),
                          Admission(["under_score.demo.test"])):
            self.assertEqual(
                admission.reason("under_score.demo.test"),
                "not a valid host name: '_' is not allowed in a certificate's names (letters, digits and hyphens only)",
            )
            self.assertFalse(admission.admits("_acme-challenge.demo.test"))
            self.assertFalse(admission.admits("a.under_score.demo.test."))


class WildcardAdmissionTests(SynchronousTestCase):
    """Tests for Admission's wildcard certificate names (issuance.wildcard)."""

    def test_certificate_name(self) -> None:
        """One label below a *. entry maps to it, the base name too when listed; deeper names keep their own."""
        admission = Admission(["*.example.test", "example.test", "*.other.test"], wildcard=True)
        self.assertEqual(admission.certificate_name("A.example.test"), "*.example.test")
        self.assertEqual(admission.certificate_name("example.test"), "*.example.test")
        self.assertEqual(admission.certificate_name("x.a.example.test"), "x.a.example.test")
        self.assertEqual(admission.certificate_name("other.test"), "other.test")
        self.assertEqual(admission.certificate_names("*.example.test"), ("*.example.test", "example.test"))
        self.assertEqual(admission.certificate_names("*.other.test"), ("*.other.test",))
        self.assertIsNone(admission.reason("*.example.test"))

    def test_off(self) -> None:
        """Without wildcard every name is its own certificate and *. names are not admitted."""
        admission = Admission(["*.example.test", "example.test"])
        self.assertEqual(admission.certificate_name("a.example.test"), "a.example.test")
        self.assertEqual(admission.certificate_names("*.example.test"), ("*.example.test",))
        self.assertIsNotNone(admission.reason("*.example.test"))

    def test_wildcard_name_reasons(self) -> None:
        """A *. name not admitted says why: malformed, not a domains entry, or wildcard off."""
        on = Admission(["*.example.test"], wildcard=True)
        self.assertEqual(on.reason("*.other.test"), "host is not included in plugin config.domains")
        self.assertIsNotNone(on.reason("*.ex_ample.test"))
        self.assertIsNotNone(on.reason("*.*.example.test"))
        off = Admission(["*.example.test"])
        self.assertEqual(off.reason("*.example.test"), "wildcard certificates need issuance.wildcard: true")
