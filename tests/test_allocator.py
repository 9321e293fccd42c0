"""Tests for kongacme.allocator (glibc's thresholds, through a fake C library and the real one)."""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from kongacme import allocator
from kongacme.allocator import M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, MMAP_THRESHOLD, TRIM_THRESHOLD, tune_allocator


class FakeLibc:
    """``mallopt`` calls recorded; each answers ``answer`` (glibc: 1 for done, 0 for refused)."""

    def __init__(self, answer: int = 1) -> None:
        self.calls: list[tuple[int, int]] = []
        self.answer = answer

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append((param, value))
        return self.answer


class TuneAllocatorTests(SynchronousTestCase):
    def test_sets_both_thresholds(self) -> None:
        """Both thresholds are fixed: buffers up to 1 MiB from the heap, 4 MiB kept at its top."""
        libc = FakeLibc()
        self.assertTrue(tune_allocator({}, libc))
        self.assertEqual(libc.calls, [(M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD)])
        self.assertEqual((MMAP_THRESHOLD, TRIM_THRESHOLD), (1 << 20, 4 << 20))

    def test_operator_settings_kept(self) -> None:
        """Either of glibc's environment variables set: nothing is changed."""
        for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"):
            libc = FakeLibc()
            self.assertFalse(tune_allocator({name: "131072"}, libc))
            self.assertEqual(libc.calls, [])

    def test_refused(self) -> None:
        """A refused ``mallopt`` is reported as nothing changed."""
        self.assertFalse(tune_allocator({}, FakeLibc(answer=0)))

    def test_not_glibc(self) -> None:
        """Another C library (no ``gnu_get_libc_version``): left alone."""
        self.patch(allocator, "_glibc", lambda: None)
        self.assertFalse(tune_allocator({}))

    def test_real_glibc(self) -> None:
        """This machine's glibc takes both settings (the daemon's own call, kongacme.tap)."""
        libc: Any = allocator._glibc()
        if libc is None:
            raise self.skipTest("not glibc")
        self.assertTrue(tune_allocator({}, libc))
