"""
Tests for kongacme.storage (the package: storage_from_config and exports).
"""

from __future__ import annotations

import os
import stat

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

import kongacme.storage
from kongacme.config.acme import AcmeConfig
from kongacme.interfaces import IStorage
from kongacme.storage import FileStorage, MemoryStorage, storage_from_config


def _config(storage: str) -> AcmeConfig:
    return AcmeConfig(account_email="ops@example.com", storage=storage)


class StorageFromConfigTests(SynchronousTestCase):
    """
    Tests for storage_from_config.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.state_dir = os.path.abspath(self.mktemp())

    def test_shm(self) -> None:
        """
        storage: shm is a MemoryStorage on the given clock.
        """
        storage = storage_from_config(_config("shm"), self.state_dir, self.clock)
        self.assertIsInstance(storage, MemoryStorage)
        self.assertTrue(verifyObject(IStorage, storage))
        storage.set("k", b"v", ttl=1)
        self.clock.advance(1)
        self.assertIsNone(self.successResultOf(storage.get("k")))

    def test_kong(self) -> None:
        """
        storage: kong is a FileStorage in <state_dir>/storage, created 0700.
        """
        storage = storage_from_config(_config("kong"), self.state_dir, self.clock)
        self.assertIsInstance(storage, FileStorage)
        self.assertEqual(storage.directory, os.path.join(self.state_dir, "storage"))
        self.assertEqual(stat.S_IMODE(os.stat(storage.directory).st_mode), 0o700)
        storage.set("k", b"v")
        again = storage_from_config(_config("kong"), self.state_dir, self.clock)
        self.assertEqual(self.successResultOf(again.get("k")), b"v")

    def test_exports(self) -> None:
        """
        The package re-exports its public names.
        """
        for name in kongacme.storage.__all__:
            self.assertTrue(hasattr(kongacme.storage, name), name)
