"""
Tests for kongacme.workers.zygote.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from kongacme.workers.supervisor import worker_environment
from kongacme.workers.zygote import Zygote, ZygoteError

CHILD = "tests.zygote_child"


class Recorder(ProcessProtocol):
    """Records a forked child's output and end."""

    def __init__(self):
        self.output: dict[int, bytes] = {1: b"", 2: b""}
        self.ended: Deferred = Deferred()

    def childDataReceived(self, childFD, data):
        self.output[childFD] += data

    def processEnded(self, reason):
        self.ended.callback(reason.value)


class ZygoteTests(TestCase):
    """
    Tests for kongacme.workers.zygote.Zygote, with a real zygote process
    forking tests/zygote_child.py.
    """

    def setUp(self):
        self.zygote = Zygote(reactor, worker_environment(), module=CHILD)
        self.addCleanup(self.zygote.stop)

    def spawn(self, *args: str, extra: dict | None = None):
        ours, theirs = socket.socketpair()
        self.addCleanup(ours.close)
        recorder = Recorder()
        fds = {0: "w", 1: "r", 2: "r", 3: theirs.fileno()}
        fds.update(extra or {})
        argv = [sys.executable, "-m", CHILD] + list(args) + ["--master-pid", str(os.getpid())]
        try:
            transport = self.zygote.spawnProcess(recorder, sys.executable, argv, env=None, childFDs=fds)
        finally:
            theirs.close()
        return recorder, transport, ours

    @inlineCallbacks
    def report(self, ours: socket.socket):
        ours.setblocking(False)
        data = b""
        for _ in range(300):
            try:
                data += ours.recv(65536)
            except BlockingIOError:
                pass
            if data.endswith(b"\n"):
                return json.loads(data)
            yield deferLater(reactor, 0.02, lambda: None)
        raise AssertionError("no report from the child")

    @inlineCallbacks
    def test_child_of_the_zygote(self):
        """
        A forked child gets its descriptors where the master asked (and
        nothing else above 2), its output reaches the protocol, its pid is
        the transport's, its parent is the zygote, and its exit status
        reaches processEnded.
        """
        recorder, transport, ours = self.spawn("exit", "0")
        got = yield self.report(ours)
        self.assertEqual(got["pid"], transport.pid)
        self.assertEqual(got["ppid"], self.zygote.pid)
        self.assertNotEqual(got["ppid"], os.getpid())
        self.assertEqual(got["fds"], [0, 1, 2, 3])
        ended = yield recorder.ended
        self.assertIsInstance(ended, ProcessDone)
        self.assertIn(b"out from %d" % transport.pid, recorder.output[1])
        self.assertIn(b"err from %d" % transport.pid, recorder.output[2])

    @inlineCallbacks
    def test_exit_code_and_listening_socket(self):
        """A child's non-zero exit is a ProcessTerminated with its code; an extra descriptor arrives too."""
        listening = socket.socket()
        self.addCleanup(listening.close)
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        recorder, transport, ours = self.spawn("exit", "3", extra={4: listening.fileno()})
        got = yield self.report(ours)
        self.assertEqual(got["fds"], [0, 1, 2, 3, 4])
        ended = yield recorder.ended
        self.assertIsInstance(ended, ProcessTerminated)
        self.assertEqual(ended.exitCode, 3)

    @inlineCallbacks
    def test_signal(self):
        """signalProcess goes through the zygote: a KILLed child ends with signal 9."""
        recorder, transport, ours = self.spawn("wait")
        yield self.report(ours)
        transport.signalProcess("KILL")
        ended = yield recorder.ended
        self.assertEqual(ended.signal, signal.SIGKILL)

    @inlineCallbacks
    def test_zygote_dies_children_follow(self):
        """
        When the zygote dies its children end too (their parent-death
        signal) and are reported ended; the next spawn starts a new zygote.
        """
        recorder, transport, ours = self.spawn("wait")
        got = yield self.report(ours)
        yield self.zygote.stop()
        ended = yield recorder.ended
        self.assertIsInstance(ended, ProcessTerminated)
        for _ in range(250):
            if not os.path.exists("/proc/%d" % got["pid"]):
                break
            yield deferLater(reactor, 0.02, lambda: None)
        self.assertFalse(os.path.exists("/proc/%d" % got["pid"]))
        self.assertFalse(self.zygote.running)
        again, transport, ours = self.spawn("exit", "0")
        yield self.report(ours)
        ended = yield again.ended
        self.assertIsInstance(ended, ProcessDone)

    def test_only_its_module(self):
        """The zygote refuses to start anything but its module, with ZygoteError."""
        recorder = Recorder()
        error = self.assertRaises(
            ZygoteError, self.zygote.spawnProcess, recorder, sys.executable, [sys.executable, "-c", "pass"],
            None, {0: "w"},
        )
        self.assertIn(CHILD, error.reason)

    def test_unsupported_descriptor(self):
        """A childFDs entry other than a descriptor, "r", or "w" for standard input is refused."""
        self.assertRaises(
            ZygoteError, self.zygote.spawnProcess, Recorder(), sys.executable, [sys.executable, "-m", CHILD],
            None, {0: "w", 5: "w"},
        )

    def test_stop_not_running(self):
        """stop() before any spawn fires at once: there is no zygote yet."""
        self.assertFalse(self.zygote.running)
        self.assertIsNone(self.zygote.pid)
        self.successResultOf(self.zygote.stop())
