"""
Counting TLS records in a byte stream (RFC 8446 §5.1: a 5-byte header
whose last two bytes are the length), so that plaintext is asked of
OpenSSL only when a whole record has arrived: a ``recv`` with no complete
record can only raise ``WantReadError``, an exception per read event.
"""

from __future__ import annotations


def count_records(need: int, header: bytes, data: bytes) -> tuple[int, int, bytes]:
    """
    The records ``data`` completes, continuing a stream cut anywhere.

    :param need: bytes still to come of the record being read (0: at a
        record boundary).
    :param header: the start of a record header cut by the last segment.
    :return: ``(complete records, need, header)`` after ``data``.
    """
    if header:
        data = header + data
        header = b""
    size = len(data)
    position = 0
    complete = 0
    while True:
        if need:
            if size - position < need:
                need -= size - position
                break
            position += need
            need = 0
            complete += 1
        if size - position < 5:
            header = data[position:]
            break
        need = 5 + (data[position + 3] << 8 | data[position + 4])
    return complete, need, header
