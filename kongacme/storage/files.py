"""
``storage: kong``: the daemon's own persistent
:class:`~kongacme.interfaces.IStorage`, one file per key under its state
directory.

Kong keeps this store in its database; kongacme keeps it in files that
survive a restart and ``kill -9``, readable only by the daemon's user
(private keys live here), and safe to share between processes on one host.
"""

from __future__ import annotations

import fcntl
import os
import secrets
from contextlib import contextmanager
from typing import Iterator, Optional

import attrs
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from kongacme.interfaces import IAtomicStorage, IStorage
from kongacme.storage._common import (
    check_key,
    check_prefix,
    check_ttl,
    check_value,
    expired,
    expiry,
)
from kongacme.storage._fileformat import (
    LOCK_NAME,
    TEMP_PREFIX,
    Corrupt,
    Entry,
    envelope,
    file_name,
    key_from_file_name,
    read_entry,
)

#: At most one sweep of expired files per this many seconds of clock time,
#: started by a write (and one when the store is opened).
SWEEP_INTERVAL = 3600.0


@implementer(IStorage, IAtomicStorage)
@attrs.define
class FileStorage:
    """
    One file per key in ``directory``.

    - File names: ``k-`` and the key percent-encoded (only ``a-z 0-9 . _ -``
      kept, so names are safe and reversible on any file system), or ``h-``
      and a SHA-256 of the key when that would be too long; the key is also
      kept inside the file, which is authoritative.
    - Contents: a one-line header (format, expiry, value length, key), then
      the raw value; see :mod:`kongacme.storage._fileformat`.
    - Writes are atomic: a temporary file (``.tmp-*``) in the same directory
      is written and fsynced, renamed over the final name and the directory
      fsynced. A crash leaves at most a temporary file, ignored by readers
      and removed when the store is next opened.
    - Every change (``set``, ``add``, ``delete``, expiry removal) holds an
      exclusive ``flock`` on ``directory/.lock``, so ``add`` is atomic
      against other processes using the same directory; reads take no lock
      (a rename is atomic).
    - The directory is mode 0700 and files 0600.
    - A corrupt file (bad header, truncated value, key of another file) is
      logged and treated as absent; ``set`` and ``add`` replace it.
    - Expired files are removed when met and by a sweep of the directory at
      most every :data:`SWEEP_INTERVAL` seconds, started by a write.

    The I/O is small and done synchronously in the reactor thread, and a
    change may wait briefly for another process's change to finish. Errors
    other than "missing" or "corrupt" (permissions, full disk) fail the
    returned ``Deferred``.

    :ivar _directory: where the files live; created if missing.
    :ivar _clock: an :class:`~twisted.internet.interfaces.IReactorTime`;
        "now" is ``clock.seconds()`` (expiry times are stored absolute, so
        they survive a restart with the real reactor).
    """

    _directory: str
    _clock: IReactorTime
    _next_sweep: float = attrs.field(default=0.0, init=False, repr=False)

    log = Logger()

    def __attrs_post_init__(self) -> None:
        os.makedirs(self._directory, mode=0o700, exist_ok=True)
        # An existing directory may have been created with the umask.
        os.chmod(self._directory, 0o700)
        with self._locked():
            # Temporary files are only written under the lock, so any seen
            # while holding it were left by a crash.
            for name in os.listdir(self._directory):
                if name.startswith(TEMP_PREFIX):
                    self._unlink(os.path.join(self._directory, name))
        self.sweep()

    @property
    def directory(self) -> str:
        """The directory holding the files."""
        return self._directory

    # -- IStorage ---------------------------------------------------------

    def get(self, key: str) -> Deferred[Optional[bytes]]:
        """
        :return: ``Deferred`` firing with the value, or ``None`` when absent,
            expired or corrupt.
        """
        check_key(key)
        return maybeDeferred(self._get, key)

    def set(self, key: str, value: bytes, ttl: Optional[float] = None) -> Deferred[None]:
        """
        Store ``value`` under ``key``, replacing any value and TTL.

        :param ttl: seconds until the entry expires, or ``None``.
        :return: ``Deferred`` firing with ``None`` once on disk.
        """
        check_key(key)
        check_value(value)
        return maybeDeferred(self._put, key, value, check_ttl(ttl), False).addCallback(lambda _: None)

    def add(self, key: str, value: bytes, ttl: Optional[float] = None) -> Deferred[bool]:
        """
        Store ``value`` only if ``key`` is absent, expired or corrupt;
        atomic across processes sharing the directory.

        :return: ``Deferred`` firing with ``True`` if stored.
        """
        check_key(key)
        check_value(value)
        return maybeDeferred(self._put, key, value, check_ttl(ttl), True)

    def delete(self, key: str) -> Deferred[None]:
        """
        Remove ``key``; no error if absent.

        :return: ``Deferred`` firing with ``None``.
        """
        check_key(key)
        return maybeDeferred(self._delete, key)

    def list(self, prefix: str) -> Deferred[list[str]]:
        """
        :return: ``Deferred`` firing with the unexpired keys starting with
            ``prefix`` (literally; ``""`` lists all).
        """
        check_prefix(prefix)
        return maybeDeferred(self._list, prefix)

    def compare_and_set(
        self, key: str, expected: bytes, value: bytes, ttl: Optional[float] = None
    ) -> Deferred[bool]:
        """
        Set ``key`` to ``value`` only if its live value equals ``expected``;
        atomic across processes (under the directory's flock).

        :return: ``Deferred`` firing with ``True`` if set.
        """
        check_key(key)
        check_value(value)
        return maybeDeferred(self._swap, key, expected, value, check_ttl(ttl))

    def compare_and_delete(self, key: str, expected: bytes) -> Deferred[bool]:
        """
        Delete ``key`` only if its live value equals ``expected``; atomic
        across processes.

        :return: ``Deferred`` firing with ``True`` if deleted.
        """
        check_key(key)
        return maybeDeferred(self._swap, key, expected, None, None)

    def _swap(self, key: str, expected: bytes, value: Optional[bytes], ttl: Optional[float]) -> bool:
        name = file_name(key)
        now = self._clock.seconds()
        with self._locked():
            entry = self._read(name, with_value=True)
            if entry is None or entry.key != key or expired(entry.expires_at, now) or entry.value != expected:
                return False
            if value is None:
                if self._unlink(os.path.join(self._directory, name)):
                    self._sync_directory()
            else:
                self._write(name, envelope(key, value, expiry(now, ttl)))
        return True

    # -- maintenance ------------------------------------------------------

    def sweep(self) -> int:
        """
        Remove every expired file now (corrupt ones are left for a person to
        look at, and reported).

        :return: how many were removed.
        """
        now = self._clock.seconds()
        self._next_sweep = now + SWEEP_INTERVAL
        stale = []
        for name in self._names():
            entry = self._read(name, with_value=False)
            if entry is not None and expired(entry.expires_at, now):
                stale.append(name)
        return self._drop_expired(stale)

    # -- implementation ---------------------------------------------------

    def _get(self, key: str) -> Optional[bytes]:
        name = file_name(key)
        entry = self._read(name, with_value=True)
        if entry is None or entry.key != key:
            return None
        if expired(entry.expires_at, self._clock.seconds()):
            self._drop_expired([name])
            return None
        return entry.value

    def _put(self, key: str, value: bytes, ttl: Optional[float], only_if_absent: bool) -> bool:
        name = file_name(key)
        now = self._clock.seconds()
        with self._locked():
            if only_if_absent:
                entry = self._read(name, with_value=False)
                if entry is not None and entry.key == key and not expired(entry.expires_at, now):
                    return False
            self._write(name, envelope(key, value, expiry(now, ttl)))
        if now >= self._next_sweep:
            self.sweep()
        return True

    def _delete(self, key: str) -> None:
        with self._locked():
            if self._unlink(os.path.join(self._directory, file_name(key))):
                self._sync_directory()

    def _list(self, prefix: str) -> list[str]:
        now = self._clock.seconds()
        found, stale = [], []
        for name in self._names():
            try:
                key = key_from_file_name(name)
            except Corrupt as e:
                self._report(name, str(e))
                continue
            # Hashed names hold their key only inside; read those.
            if key is not None and not key.startswith(prefix):
                continue
            entry = self._read(name, with_value=False)
            if entry is None or not entry.key.startswith(prefix):
                continue
            if expired(entry.expires_at, now):
                stale.append(name)
            else:
                found.append(entry.key)
        self._drop_expired(stale)
        return found

    def _names(self) -> Iterator[str]:
        for name in os.listdir(self._directory):
            if name.startswith(("k-", "h-")):
                yield name

    def _read(self, name: str, with_value: bool) -> Optional[Entry]:
        """The entry in file ``name``; ``None`` if missing or corrupt."""
        try:
            entry = read_entry(os.path.join(self._directory, name), with_value)
        except Corrupt as e:
            self._report(name, str(e))
            return None
        if entry is not None and file_name(entry.key) != name:
            self._report(name, f"holds key {entry.key!r}, which belongs in {file_name(entry.key)}")
            return None
        return entry

    def _report(self, name: str, reason: str) -> None:
        self.log.warn(
            "ignoring corrupt storage file {path}: {reason}",
            path=os.path.join(self._directory, name),
            reason=reason,
        )

    def _drop_expired(self, names: list[str]) -> int:
        if not names:
            return 0
        dropped = 0
        with self._locked():
            now = self._clock.seconds()
            for name in names:
                # Look again under the lock: another process may have
                # written a fresh value meanwhile.
                entry = self._read(name, with_value=False)
                if entry is not None and expired(entry.expires_at, now):
                    dropped += self._unlink(os.path.join(self._directory, name))
            if dropped:
                self._sync_directory()
        return dropped

    @contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(os.path.join(self._directory, LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            # Closing the descriptor releases the lock.
            os.close(fd)

    def _write(self, name: str, data: bytes) -> None:
        temp = os.path.join(self._directory, TEMP_PREFIX + secrets.token_hex(8))
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            with open(fd, "wb") as f:
                # The umask may have taken bits away; make it exactly 0600.
                os.fchmod(f.fileno(), 0o600)
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temp, os.path.join(self._directory, name))
        except BaseException:
            self._unlink(temp)
            raise
        self._sync_directory()

    def _unlink(self, path: str) -> bool:
        try:
            os.unlink(path)
        except FileNotFoundError:
            return False
        return True

    def _sync_directory(self) -> None:
        fd = os.open(self._directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
