"""
Tests for kongacme.tls.cache.
"""

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from kongacme.interfaces import ICertificateCache
from kongacme.testing import TestCA
from kongacme.tls.cache import CertificateCache
from kongacme.tls.fallback import generate_self_signed


class CertificateCacheTests(SynchronousTestCase):
    """
    Tests for CertificateCache.
    """

    def setUp(self):
        self.ca = TestCA.create()
        self.fallback = generate_self_signed()
        self.cache = CertificateCache(self.fallback)

    def test_interface(self):
        """CertificateCache provides ICertificateCache."""
        self.assertTrue(verifyObject(ICertificateCache, self.cache))

    def test_exact_then_wildcard_then_fallback(self):
        """Exact names win over wildcards; unknown names get the fallback."""
        exact = self.ca.issue(["www.example.com"])
        wild = self.ca.issue(["*.example.com"])
        self.cache.put(exact)
        self.cache.put(wild)
        self.assertIs(self.cache.lookup("www.example.com"), exact)
        self.assertIs(self.cache.lookup("api.example.com"), wild)
        self.assertIs(self.cache.lookup("other.test"), self.fallback)

    def test_wildcard_one_label(self):
        """A wildcard covers exactly one label: not the apex, not two labels."""
        wild = self.ca.issue(["*.example.com"])
        self.cache.put(wild)
        self.assertIs(self.cache.lookup("example.com"), self.fallback)
        self.assertIs(self.cache.lookup("a.b.example.com"), self.fallback)
        self.assertIs(self.cache.lookup("a.example.com"), wild)

    def test_no_sni(self):
        """No server name gets the fallback."""
        self.cache.put(self.ca.issue(["a.test"]))
        self.assertIs(self.cache.lookup(None), self.fallback)

    def test_names_override_and_remove(self):
        """put() files under given names; remove() forgets one name only."""
        cert = self.ca.issue(["a.test"])
        self.cache.put(cert, ["a.test", "b.test"])
        self.assertEqual(sorted(self.cache.names()), ["a.test", "b.test"])
        self.cache.remove("a.test")
        self.cache.remove("missing.test")
        self.assertIs(self.cache.lookup("a.test"), self.fallback)
        self.assertIs(self.cache.get("b.test"), cert)

    def test_replace_notifies(self):
        """Replacing a certificate takes effect at once and notifies listeners."""
        seen = []
        self.cache.subscribe(lambda name, c: seen.append((name, c)))
        first, second = self.ca.issue(["a.test"]), self.ca.issue(["a.test"])
        self.cache.put(first)
        self.cache.put(first)  # same object: no change, no event
        self.cache.put(second)
        self.assertIs(self.cache.lookup("a.test"), second)
        self.assertEqual(seen, [("a.test", first), ("a.test", second)])

    def test_listener_error_contained(self):
        """A failing listener is logged; the cache still updates."""
        self.cache.subscribe(lambda name, c: 1 / 0)
        cert = self.ca.issue(["a.test"])
        self.cache.put(cert)
        self.assertIs(self.cache.lookup("a.test"), cert)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
