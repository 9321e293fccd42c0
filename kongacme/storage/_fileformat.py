"""
The on-disk format of :class:`kongacme.storage.files.FileStorage`.

A file name is ``k-`` followed by the key, UTF-8 and percent-encoded with
only ``a-z 0-9 . _ -`` left as they are (upper case is encoded too, so that
case-insensitive file systems cannot merge two keys); when that is longer
than :data:`MAX_NAME` characters it is ``h-`` and the SHA-256 of the key.

A file holds one header line and the raw value::

    kongacme-storage/1 <expires_at | -> <value length> <percent-encoded key>\\n
    <value bytes>

``expires_at`` is absolute seconds on the store's clock (``repr`` of a
float). The length lets a reader spot a truncated file; the key lets it
check the file is where it belongs, and is the only way back from a hashed
name.
"""

from __future__ import annotations

import hashlib
import math
import os
from typing import NamedTuple, Optional
from urllib.parse import unquote_to_bytes

MAGIC = b"kongacme-storage/1"
TEMP_PREFIX = ".tmp-"
LOCK_NAME = ".lock"
#: Longest ``k-`` name; most file systems allow 255 bytes.
MAX_NAME = 200
#: Longest header line accepted.
MAX_HEADER = 64 * 1024

_SAFE = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789._-")


class Corrupt(Exception):
    """A storage file (or file name) is not in the expected format."""


class Entry(NamedTuple):
    """
    One stored entry.

    :ivar value: ``None`` when only the header was read.
    """

    key: str
    value: Optional[bytes]
    expires_at: Optional[float]


def quote(key: str) -> str:
    """Percent-encode ``key``'s UTF-8, keeping only ``a-z 0-9 . _ -``."""
    return "".join(chr(b) if b in _SAFE else "%%%02X" % b for b in key.encode("utf-8"))


def unquote(text: str) -> str:
    """
    Inverse of :func:`quote`.

    :raises Corrupt: if ``text`` is not what :func:`quote` writes.
    """
    try:
        key = unquote_to_bytes(text).decode("utf-8")
    except UnicodeDecodeError:
        raise Corrupt(f"{text[:60]!r} is not percent-encoded UTF-8") from None
    if not key or quote(key) != text:
        raise Corrupt(f"{text[:60]!r} is not a percent-encoded key")
    return key


def file_name(key: str) -> str:
    """The file name for ``key``."""
    name = "k-" + quote(key)
    if len(name) > MAX_NAME:
        return "h-" + hashlib.sha256(key.encode("utf-8")).hexdigest()
    return name


def key_from_file_name(name: str) -> Optional[str]:
    """
    The key of a ``k-`` file name; ``None`` for a hashed name (its key is
    only inside).

    :raises Corrupt: for a name :func:`file_name` would not produce.
    """
    if name.startswith("h-"):
        return None
    if not name.startswith("k-"):
        raise Corrupt(f"{name[:60]!r} is not a storage file name")
    key = unquote(name[2:])
    if file_name(key) != name:
        raise Corrupt(f"{name[:60]!r} is not the file name of its key")
    return key


def envelope(key: str, value: bytes, expires_at: Optional[float]) -> bytes:
    """A file's contents."""
    expires = b"-" if expires_at is None else repr(float(expires_at)).encode("ascii")
    header = b" ".join((MAGIC, expires, b"%d" % len(value), quote(key).encode("ascii")))
    return header + b"\n" + value


def parse_header(line: bytes) -> tuple[str, Optional[float], int]:
    """
    :return: ``(key, expires_at, value length)`` from a header line
        (without its newline).
    :raises Corrupt: if it is not one.
    """
    parts = line.split(b" ")
    if len(parts) != 4 or parts[0] != MAGIC:
        raise Corrupt("not a kongacme storage file (bad header)")
    _, expires, length, quoted = parts
    try:
        expires_at = None if expires == b"-" else float(expires.decode("ascii"))
        size = int(length.decode("ascii"))
        key = unquote(quoted.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise Corrupt("bad header fields") from None
    if expires_at is not None and not math.isfinite(expires_at):
        raise Corrupt("bad expiry time")
    if size < 0:
        raise Corrupt("bad value length")
    return key, expires_at, size


def read_entry(path: str, with_value: bool) -> Optional[Entry]:
    """
    Read the entry in ``path`` (only its header unless ``with_value``; the
    file size is checked against the header either way).

    :return: ``None`` if the file does not exist.
    :raises Corrupt: if the file is damaged.
    """
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return None
    with f:
        line = f.readline(MAX_HEADER)
        if not line.endswith(b"\n"):
            raise Corrupt("no header line")
        key, expires_at, size = parse_header(line[:-1])
        actual = os.fstat(f.fileno()).st_size - len(line)
        if actual != size:
            raise Corrupt(f"value is {actual} bytes, header says {size} (truncated?)")
        value = f.read() if with_value else None
    if value is not None and len(value) != size:
        raise Corrupt(f"value is {len(value)} bytes, header says {size}")
    return Entry(key, value, expires_at)
