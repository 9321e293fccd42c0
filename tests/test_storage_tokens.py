"""
Tests for kongacme.storage.tokens.
"""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from kongacme.interfaces import IChallengeTokenStore
from kongacme.storage import keys
from kongacme.storage.tokens import StorageChallengeTokenStore
from kongacme.testing import MemoryStorage


class StorageChallengeTokenStoreTests(SynchronousTestCase):
    """
    Tests for StorageChallengeTokenStore.
    """

    def setUp(self):
        self.clock = Clock()
        self.storage = MemoryStorage(self.clock)
        self.store = StorageChallengeTokenStore(self.storage)

    def test_interface(self):
        """It is an IChallengeTokenStore."""
        self.assertTrue(verifyObject(IChallengeTokenStore, self.store))

    def test_kong_key_and_ttl(self):
        """Tokens live under Kong's <token>#http-01 key and expire after the TTL."""
        self.successResultOf(self.store.put("tok", "tok.thumb", ttl=3600))
        self.assertEqual(self.successResultOf(self.storage.get("tok#http-01")), b"tok.thumb")
        self.assertEqual(self.successResultOf(self.store.get("tok")), "tok.thumb")
        self.clock.advance(3600)
        self.assertIsNone(self.successResultOf(self.store.get("tok")))

    def test_written_by_kong(self):
        """A token a Kong node wrote is answered here."""
        self.successResultOf(self.storage.set(keys.http01_token("k"), b"k.thumb", 3600))
        self.assertEqual(self.successResultOf(self.store.get("k")), "k.thumb")

    def test_remove_and_corrupt(self):
        """remove() forgets a token; a non-ASCII value is reported and treated as absent."""
        self.successResultOf(self.store.put("a", "a.b"))
        self.successResultOf(self.store.remove("a"))
        self.assertIsNone(self.successResultOf(self.store.get("a")))
        self.successResultOf(self.storage.set("bad#http-01", b"\xff\xfe"))
        self.assertIsNone(self.successResultOf(self.store.get("bad")))
