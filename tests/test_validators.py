"""
Tests for kongacme.validators.
"""

from __future__ import annotations

import attrs
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from kongacme.interfaces import IStorage
from kongacme.testing import MemoryStorage
from kongacme.validators import provides


@attrs.define
class _Holder:
    _storage: object = attrs.field(validator=provides(IStorage))


class ProvidesTests(SynchronousTestCase):
    """
    Tests for provides.
    """

    def test_accepts_provider(self) -> None:
        """
        A value providing the interface is accepted.
        """
        storage = MemoryStorage(Clock())
        self.assertIs(_Holder(storage)._storage, storage)

    def test_refuses_other(self) -> None:
        """
        Anything else is a TypeError naming the field and the interface.
        """
        with self.assertRaises(TypeError) as caught:
            _Holder("not storage")
        self.assertIn("storage must provide IStorage, not 'not storage'", str(caught.exception))
