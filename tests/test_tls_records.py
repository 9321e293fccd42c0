"""
Tests for kongacme.tls.records.
"""

from __future__ import annotations

import ssl

from hypothesis import given, settings
from hypothesis import strategies as st
from OpenSSL import SSL
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from kongacme.testing import TestCA
from kongacme.tls.context import ContextBuilder
from kongacme.tls.records import count_records, seal
from tests.tlsclients import memory_client

_CERTIFIED = TestCA.create().issue("app.example.com")


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



def connected_pair() -> tuple[SSL.Connection, ssl.SSLObject, ssl.MemoryBIO]:
    """A kongacme server connection and a client, both over memory BIOs, handshake done."""
    server = ContextBuilder(Clock()).connection_for(_CERTIFIED)
    server.set_accept_state()
    client, incoming, outgoing = memory_client("app.example.com")
    for _ in range(10):
        try:
            client.do_handshake()
        except ssl.SSLWantReadError:
            pass
        else:
            break
        server.bio_write(outgoing.read())
        try:
            server.do_handshake()
        except SSL.WantReadError:
            pass
        incoming.write(server.bio_read(1 << 16))
    server.bio_write(outgoing.read())  # the client's Finished
    server.do_handshake()
    try:
        while True:  # the session tickets
            incoming.write(server.bio_read(1 << 16))
    except SSL.WantReadError:
        pass
    return server, client, incoming


class SealTests(SynchronousTestCase):
    """Tests for seal: plaintext into records, out of the BIO in one read."""

    @settings(max_examples=30, deadline=None)
    @given(size=st.integers(1, 200_000))
    def test_records_decrypt_to_the_data(self, size: int) -> None:
        """
        Any amount of plaintext comes out as records in one read (nothing
        left in the BIO, ``more`` false), and they decrypt to it.
        """
        server, client, incoming = connected_pair()
        data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
        records, more = seal(server, data)
        self.assertFalse(more)
        self.assertRaises(SSL.WantReadError, server.bio_read, 1)
        incoming.write(records)
        received = b""
        while len(received) < size:
            received += client.read(1 << 17)
        self.assertEqual(received, data)

    def test_send_error_raised(self) -> None:
        """A connection that cannot send (no handshake yet) raises OpenSSL's error."""
        server = ContextBuilder(Clock()).connection_for(_CERTIFIED)
        server.set_accept_state()
        self.assertRaises(SSL.Error, seal, server, b"data")
