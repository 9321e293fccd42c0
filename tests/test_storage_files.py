"""
Tests for kongacme.storage.files and its on-disk format.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from typing import Any

from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase, TestCase

import kongacme
from kongacme.storage import keys
from kongacme.storage._fileformat import MAX_NAME, file_name, key_from_file_name
from kongacme.storage.files import SWEEP_INTERVAL, FileStorage
from tests.lock_conformance import LockConformanceMixin
from tests.storage_conformance import SPECIAL_KEYS, StorageConformanceMixin

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(kongacme.__file__)))

# A second process racing add() on the same keys; prints the indexes it won.
_RACER = r"""
import json, sys
from twisted.internet.task import Clock
from kongacme.storage.files import FileStorage
storage = FileStorage(sys.argv[1], Clock())
print("ready", flush=True)
sys.stdin.readline()
won = []
for i in range(int(sys.argv[2])):
    storage.add("race:%d" % i, b"child").addCallback(lambda ok, i=i: ok and won.append(i))
print(json.dumps(won), flush=True)
"""

# Rewrites five keys with 256 KiB values forever, printing each write.
_WRITER = r"""
import sys
from twisted.internet.task import Clock
from kongacme.storage.files import FileStorage
storage = FileStorage(sys.argv[1], Clock())
i = 0
while True:
    storage.set("key:%d" % (i % 5), (b"%08d" % i) * 32768)
    print(i, flush=True)
    i += 1
"""


def _python(code: str, *args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=_REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen(
        [sys.executable, "-c", code, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
    )


def _corrupt_events(events: Any) -> list[dict]:
    return [e for e in events if "corrupt storage file" in e.get("log_format", "")]


class FileStorageConformanceTests(StorageConformanceMixin, LockConformanceMixin, TestCase):
    """
    Tests for FileStorage: the IStorage conformance suite.
    """

    def make_storage(self) -> tuple[FileStorage, Clock]:
        clock = Clock()
        return FileStorage(self.mktemp(), clock), clock


class FileNameTests(SynchronousTestCase):
    """
    Tests for file_name and key_from_file_name.
    """

    def test_reversible(self) -> None:
        """
        Every key maps to a plain file name (no separator, not hidden) that
        maps back to it.
        """
        for key in SPECIAL_KEYS + ("../../etc/passwd", "a", "%41"):
            name = file_name(key)
            self.assertTrue(name.startswith("k-"), name)
            self.assertNotIn("/", name)
            self.assertEqual(key_from_file_name(name), key)

    def test_case_insensitive_safe(self) -> None:
        """
        Keys differing only in case get names that differ even when case is
        ignored (upper case letters are percent-encoded).
        """
        self.assertNotEqual(file_name("Example.com").lower(), file_name("example.com").lower())

    def test_long_key_hashed(self) -> None:
        """
        A key whose encoded name would be too long gets a fixed-length
        hashed name, which key_from_file_name cannot reverse (None).
        """
        name = file_name(keys.cert_key("é" * 100))
        self.assertTrue(name.startswith("h-"))
        self.assertLessEqual(len(name), MAX_NAME)
        self.assertIsNone(key_from_file_name(name))


class FileStorageTests(SynchronousTestCase):
    """
    Tests for FileStorage on disk: persistence, permissions, corruption,
    crashes and other processes.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.directory = os.path.abspath(self.mktemp())
        self.storage = FileStorage(self.directory, self.clock)

    def reopen(self) -> FileStorage:
        return FileStorage(self.directory, self.clock)

    def path(self, key: str) -> str:
        return os.path.join(self.directory, file_name(key))

    def test_survives_restart(self) -> None:
        """
        A new FileStorage on the same directory sees the data, and TTLs go
        on counting from the original write.
        """
        self.storage.set("kong_acme:cert_key:a.example", b"cert")
        self.storage.set("tok#http-01", b"ka", ttl=3600)
        again = self.reopen()
        self.assertEqual(self.successResultOf(again.get("kong_acme:cert_key:a.example")), b"cert")
        self.assertEqual(sorted(self.successResultOf(again.list(""))), ["kong_acme:cert_key:a.example", "tok#http-01"])
        self.clock.advance(3600)
        self.assertIsNone(self.successResultOf(again.get("tok#http-01")))

    def test_modes(self) -> None:
        """
        The directory is 0700 and every file 0600, even with an empty umask
        and an existing directory that was more open.
        """
        os.chmod(self.directory, 0o755)
        old = os.umask(0)
        try:
            storage = self.reopen()
            storage.set("kong_acme:cert_key:a.example", b"secret")
        finally:
            os.umask(old)
        self.assertEqual(stat.S_IMODE(os.stat(self.directory).st_mode), 0o700)
        for name in os.listdir(self.directory):
            self.assertEqual(stat.S_IMODE(os.stat(os.path.join(self.directory, name)).st_mode), 0o600, name)

    def test_keys_stay_inside(self) -> None:
        """
        Keys that look like paths are stored in the directory, not where
        they point.
        """
        self.storage.set("../escape", b"v")
        self.storage.set("/etc/passwd", b"v")
        self.assertEqual(sorted(n for n in os.listdir(self.directory) if n.startswith("k-")),
                         sorted([file_name("../escape"), file_name("/etc/passwd")]))

    def test_long_key_file(self) -> None:
        """
        A long key is stored under a hashed name and still listed by prefix.
        """
        key = keys.cert_key("x" * 250)
        self.storage.set(key, b"v")
        self.assertTrue(os.path.exists(self.path(key)))
        self.assertTrue(file_name(key).startswith("h-"))
        self.assertEqual(self.successResultOf(self.storage.list(keys.CERT_KEY_PREFIX)), [key])

    def assertCorruptIgnored(self, key: str, contents: bytes) -> None:
        """``key``'s file holding ``contents`` reads as absent, is reported, and add replaces it."""
        with open(self.path(key), "wb") as f:
            f.write(contents)
        with capturedLogs() as events:
            self.assertIsNone(self.successResultOf(self.storage.get(key)))
            self.assertEqual(self.successResultOf(self.storage.list("")), [])
        reports = _corrupt_events(events)
        self.assertEqual(len(reports), 2, events)
        self.assertEqual(reports[0]["path"], self.path(key))
        self.assertTrue(reports[0]["reason"])
        self.assertIs(self.successResultOf(self.storage.add(key, b"fresh")), True)
        self.assertEqual(self.successResultOf(self.storage.get(key)), b"fresh")

    def test_corrupt_garbage(self) -> None:
        """
        A file that is not in the storage format is reported and treated as
        absent.
        """
        self.assertCorruptIgnored("k", b"\x00\xffnot a storage file")

    def test_corrupt_empty(self) -> None:
        """
        An empty file is reported and treated as absent.
        """
        self.assertCorruptIgnored("k", b"")

    def test_corrupt_truncated(self) -> None:
        """
        A file shorter than its header says is reported and treated as
        absent.
        """
        self.storage.set("k", b"0123456789")
        with open(self.path("k"), "rb") as f:
            data = f.read()
        self.assertCorruptIgnored("k", data[:-3])

    def test_corrupt_misplaced(self) -> None:
        """
        A file holding another key than its name says is reported and
        treated as absent.
        """
        self.storage.set("other", b"v")
        with open(self.path("other"), "rb") as f:
            data = f.read()
        os.unlink(self.path("other"))
        self.assertCorruptIgnored("k", data)

    def test_foreign_files(self) -> None:
        """
        Files whose names are not storage names are ignored; a "k-" name
        that is not canonical is reported.
        """
        with open(os.path.join(self.directory, "README"), "w") as f:
            f.write("hello")
        with open(os.path.join(self.directory, "k-UPPER"), "w") as f:
            f.write("hello")
        with capturedLogs() as events:
            self.assertEqual(self.successResultOf(self.storage.list("")), [])
        self.assertEqual(len(_corrupt_events(events)), 1)

    def test_temp_files(self) -> None:
        """
        A temporary file left by a crash is ignored by readers and removed
        when the store is opened again.
        """
        self.storage.set("k", b"v")
        temp = os.path.join(self.directory, ".tmp-deadbeef")
        with open(temp, "wb") as f:
            f.write(b"kongacme-storage/1 - 100 k\npartial")
        self.assertEqual(self.successResultOf(self.storage.list("")), ["k"])
        self.assertEqual(self.successResultOf(self.storage.get("k")), b"v")
        self.reopen()
        self.assertFalse(os.path.exists(temp))
        self.assertEqual(self.successResultOf(self.storage.get("k")), b"v")

    def test_expired_file_removed(self) -> None:
        """
        get of an expired key removes its file.
        """
        self.storage.set("k", b"v", ttl=1)
        self.clock.advance(1)
        self.assertIsNone(self.successResultOf(self.storage.get("k")))
        self.assertFalse(os.path.exists(self.path("k")))

    def test_sweep(self) -> None:
        """
        Expired files nobody reads are removed when the store is opened and
        by a write once SWEEP_INTERVAL has passed; others stay.
        """
        for i in range(10):
            self.storage.set("tok%d#http-01" % i, b"ka", ttl=60)
        self.storage.set("keep", b"v")
        self.clock.advance(60)
        self.reopen()
        self.assertEqual([n for n in os.listdir(self.directory) if n.startswith("k-")], [file_name("keep")])
        self.storage.set("t#http-01", b"ka", ttl=60)
        self.clock.advance(SWEEP_INTERVAL)
        self.storage.set("other", b"v")
        self.assertFalse(os.path.exists(self.path("t#http-01")))

    def test_two_process_add(self) -> None:
        """
        add is atomic against another process using the same directory: of
        two processes racing add on the same keys, exactly one wins each
        key, and the stored value is the winner's.
        """
        count = 300
        child = _python(_RACER, self.directory, str(count))
        self.addCleanup(child.stdout.close)
        self.addCleanup(child.stdin.close)
        self.assertEqual(child.stdout.readline(), b"ready\n")
        child.stdin.write(b"go\n")
        child.stdin.flush()
        mine = [i for i in range(count) if self.successResultOf(self.storage.add("race:%d" % i, b"parent"))]
        theirs = json.loads(child.stdout.readline())
        self.assertEqual(child.wait(timeout=60), 0)
        self.assertEqual(set(mine) & set(theirs), set())
        self.assertEqual(sorted(mine + theirs), list(range(count)))
        for i in range(count):
            expected = b"parent" if i in mine else b"child"
            self.assertEqual(self.successResultOf(self.storage.get("race:%d" % i)), expected)

    def test_kill_9(self) -> None:
        """
        A process killed with SIGKILL in the middle of writing leaves only
        whole values behind: nothing reads as corrupt and no temporary file
        survives the next open.
        """
        child = _python(_WRITER, self.directory)
        self.addCleanup(child.stdout.close)
        self.addCleanup(child.stdin.close)
        for _ in range(30):
            child.stdout.readline()
        os.kill(child.pid, signal.SIGKILL)
        self.assertEqual(child.wait(timeout=60), -signal.SIGKILL)
        with capturedLogs() as events:
            storage = self.reopen()
            listed = self.successResultOf(storage.list("key:"))
            self.assertEqual(sorted(listed), ["key:%d" % i for i in range(5)])
            for key in listed:
                value = self.successResultOf(storage.get(key))
                self.assertEqual(len(value), 8 * 32768)
                self.assertEqual(value, value[:8] * 32768)
        self.assertEqual(_corrupt_events(events), [])
        self.assertEqual([n for n in os.listdir(self.directory) if n.startswith(".tmp-")], [])
