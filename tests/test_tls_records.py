"""
Tests for kongacme.tls.records.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from kongacme.tls.records import count_records


def record(length: int) -> bytes:
    """An application-data record header and ``length`` bytes of body."""
    return b"\x17\x03\x03" + length.to_bytes(2, "big") + b"x" * length


class CountRecordsTests(SynchronousTestCase):
    """Tests for count_records."""

    def test_whole_records(self) -> None:
        """Two whole records in one segment: two, at a boundary afterwards."""
        self.assertEqual(count_records(0, b"", record(3) + record(0)), (2, 0, b""))

    def test_cut_body_and_header(self) -> None:
        """A record cut in its body, then one cut in its header, complete in later segments."""
        stream = record(10) + record(4)
        self.assertEqual(count_records(0, b"", stream[:8]), (0, 7, b""))
        self.assertEqual(count_records(7, b"", stream[8:17]), (1, 0, b"\x17\x03"))
        self.assertEqual(count_records(0, b"\x17\x03", stream[17:]), (1, 0, b""))

    @given(
        st.lists(st.integers(min_value=0, max_value=300), min_size=1, max_size=8),
        st.lists(st.integers(min_value=0, max_value=3000), max_size=10),
    )
    def test_any_split(self, lengths: list[int], cuts: list[int]) -> None:
        """However the stream is cut into segments, every record is counted once, when its last byte arrives."""
        stream = b"".join(record(n) for n in lengths)
        bounds = [0, *sorted({c % len(stream) for c in cuts} - {0}), len(stream)]
        need, header, total = 0, b"", 0
        for start, end in zip(bounds, bounds[1:]):
            complete, need, header = count_records(need, header, stream[start:end])
            total += complete
        self.assertEqual((total, need, header), (len(lengths), 0, b""))
