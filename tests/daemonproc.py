"""
Run a real ``twistd -n kongacme`` child process for the tests, with a
config written to a temporary directory.
"""

from __future__ import annotations

import collections
import copy
import os
import signal
import socket
import sys
import time
from typing import Any, Callable

import yaml
from twisted.internet import reactor
from twisted.python.failure import Failure
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.trial.itrial import IReporter
from zope.interface import implementer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TWISTD = "from twisted.scripts.twistd import run; run()"
#: Seconds a daemon may take to listen (within trial's 120 s per test).
START_TIMEOUT = 60


#: Sockets holding the ports free_port() handed out (oldest first).
_reserved: "collections.OrderedDict[int, socket.socket]" = collections.OrderedDict()
#: How many ports stay reserved at once (one descriptor each).
MAX_RESERVED = 512


def free_port() -> int:
    """
    A TCP port on 127.0.0.1 that nothing listens on, kept reserved: a
    socket bound to it (``SO_REUSEADDR``, never listening) stays open, so
    no later ``bind(("127.0.0.1", 0))`` of this process or any other —
    Pebble's ports, a test's upstream on port 0 — is given the same port,
    while the daemon (Twisted, like Go and redis, binds with
    ``SO_REUSEADDR``) can still listen on it.

    (Without the reservation the test's upstream once got the port chosen
    for the daemon's TLS listener: the daemon could not listen, the test's
    TLS client talked to the echoing upstream and failed with
    ``UNEXPECTED_MESSAGE``, its own ClientHello echoed back.)
    """
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind(("127.0.0.1", 0))
    port = holder.getsockname()[1]
    _reserved[port] = holder
    while len(_reserved) > MAX_RESERVED:
        _reserved.popitem(last=False)[1].close()
    return port


def _listening_inodes(port: int) -> set[str] | None:
    """
    The socket inodes listening on TCP ``port`` (any address), from
    ``/proc/net/tcp{,6}``; ``None`` where there is no such file.
    """
    found: set[str] = set()
    seen = False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                lines = f.readlines()[1:]
        except OSError:
            continue
        seen = True
        for line in lines:
            fields = line.split()
            # local_address is HEXIP:HEXPORT; state 0A is LISTEN.
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                found.add(fields[9])
    return found if seen else None


def _socket_inodes(pid: int) -> set[str]:
    """The inodes of the sockets process ``pid`` has open."""
    inodes = set()
    try:
        for fd in os.listdir("/proc/%d/fd" % (pid,)):
            try:
                target = os.readlink("/proc/%d/fd/%s" % (pid, fd))
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        pass
    return inodes


def listens(pid: int, port: int) -> bool:
    """
    Whether process ``pid`` listens on TCP ``port`` — not merely whether
    something accepts connections there (it may be another process that
    took the port). Without ``/proc``, whether a connection is accepted.
    """
    listening = _listening_inodes(port)
    if listening is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            return False
    return bool(listening & _socket_inodes(pid))


def child_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "LC_ALL")}
    env["PYTHONPATH"] = REPO
    env["PYTHONUNBUFFERED"] = "1"
    return env


class _Collector(ProcessProtocol):
    def __init__(self):
        self.output = b""
        self.ended = Deferred()
        self.waiters: list[tuple[bytes, int, Deferred]] = []

    def outReceived(self, data):
        self.output += data
        self._check()

    errReceived = outReceived

    def _check(self):
        for waiter in list(self.waiters):
            text, count, d = waiter
            if self.output.count(text) >= count:
                self.waiters.remove(waiter)
                d.callback(None)

    def processEnded(self, reason):
        self.exit_code = reason.value.exitCode
        for _, _, d in self.waiters:
            d.errback(RuntimeError("twistd exited:\n" + self.output.decode(errors="replace")))
        self.waiters = []
        self.ended.callback(self.exit_code)


def run_twistd(*args: str):
    """Run twistd to completion: Deferred of (exit code, output)."""
    collector = _Collector()
    reactor.spawnProcess(collector, sys.executable, [sys.executable, "-c", TWISTD, *args], env=child_env(), path=REPO)
    return collector.ended.addCallback(lambda code: (code, collector.output.decode(errors="replace")))


#: For each ShowsDaemonOutput test running, the Daemons made meanwhile.
_watching: list[list["Daemon"]] = []


class Daemon:
    """
    A kongacme daemon process with its config file.

    :ivar config: the config as a dict; :meth:`write` saves it.
    """

    def __init__(self, directory: str, config: dict):
        self.directory = directory
        self.config = config
        self.path = os.path.join(directory, "kongacme.yaml")
        self.collector: _Collector | None = None
        self.transport = None
        #: More environment for the process (on top of :func:`child_env`).
        self.env: dict[str, str] = {}
        for made in _watching:
            made.append(self)

    def write(self, text: str | None = None) -> None:
        with open(self.path, "w") as f:
            f.write(text if text is not None else yaml.safe_dump(self.config))

    @inlineCallbacks
    def start(self, wait_port: int):
        self.write()
        self.collector = _Collector()
        self.transport = reactor.spawnProcess(
            self.collector,
            sys.executable,
            [sys.executable, "-c", TWISTD, "-n", "--pidfile=", "kongacme", "--config", self.path],
            env=dict(child_env(), **self.env),
            path=REPO,
        )
        # Ready once the daemon process itself listens on wait_port: a
        # connection accepted there could come from another process that
        # holds the port (then the daemon exits, unable to listen).
        # A generous deadline: a loaded CI machine with cold caches can take
        # many seconds just to import (a start is normally well under one).
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.collector.ended.called:
                raise RuntimeError("twistd exited:\n" + self.output)
            if listens(self.transport.pid, wait_port):
                return
            yield deferLater(reactor, 0.05, lambda: None)
        raise RuntimeError("daemon did not listen on port %d within %d s:\n%s" % (wait_port, START_TIMEOUT, self.output))

    @property
    def output(self) -> str:
        return self.collector.output.decode(errors="replace") if self.collector else ""

    def wait_for(self, text: str, count: int = 1, timeout: float = 15.0) -> Deferred:
        """Fires when ``text`` has appeared ``count`` times in the output."""
        d = Deferred()
        self.collector.waiters.append((text.encode(), count, d))
        self.collector._check()
        def timed_out(result, timeout):
            # Returned as a Failure: a plain exception object would be a result.
            return Failure(RuntimeError("timed out waiting for %r; output:\n%s" % (text, self.output)))

        return d.addTimeout(timeout, reactor, onTimeoutCancel=timed_out)

    def signal(self, signum: int = signal.SIGHUP) -> None:
        self.transport.signalProcess(signum)

    @inlineCallbacks
    def stop(self):
        if self.collector is not None and not self.collector.ended.called:
            self.transport.signalProcess("TERM")
            yield self.collector.ended


def not_with_workers() -> Callable[[Any], None]:
    """
    A test method skipped in a ``workers: 2`` subclass of an end-to-end test
    class: that subclass runs the representative tests only (each starts
    three processes), the base class runs them all.
    """

    def skipped(self: Any) -> None:
        raise AssertionError("skipped")

    skipped.skip = "run with workers: 1 only; the workers: 2 subclass keeps the representative tests"  # type: ignore[attr-defined]
    return skipped


class ShowsDaemonOutput:
    """
    Mixin for a trial ``TestCase`` that runs :class:`Daemon` processes:
    when a test fails or errs, its report ends with the output of every
    daemon made while it ran (a client's traceback alone rarely says why).
    List it before ``TestCase``.
    """

    def run(self, result: Any) -> None:
        reporter = IReporter(result, None)
        if reporter is None:  # a plain unittest result: run as is
            super().run(result)  # type: ignore[misc]
            return
        made: list[Daemon] = []
        _watching.append(made)
        try:
            super().run(_AddsDaemonOutput(reporter, lambda: made))  # type: ignore[misc]
        finally:
            _watching.remove(made)


@implementer(IReporter)
class _AddsDaemonOutput:
    """
    A reporter that passes everything on to ``reporter``, adding the
    daemons' output to the message of each failure and error.
    """

    def __init__(self, reporter: Any, daemons: Callable[[], list[Daemon]]):
        self._reporter = reporter
        self._daemons = daemons

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reporter, name)

    def addFailure(self, test: Any, fail: Any) -> None:
        self._reporter.addFailure(test, self._with_output(fail))

    def addError(self, test: Any, error: Any) -> None:
        self._reporter.addError(test, self._with_output(error))

    def _with_output(self, problem: Any) -> Failure:
        failure = problem if isinstance(problem, Failure) else Failure(*problem)
        logs = [
            "--- output of the daemon in %s ---\n%s" % (daemon.directory, daemon.output or "(none)")
            for daemon in self._daemons()
            if daemon.collector is not None
        ]
        if not logs:
            return failure
        # The reporters print the type and str() of the value (workers of
        # trial --jobs send only those and the frames): keep the type and
        # the frames, extend the message.
        extended = copy.copy(failure)
        extended.value = _Extended("%s\n\n%s" % (failure.getErrorMessage(), "\n".join(logs)))
        return extended


class _Extended(Exception):
    """An exception's message with the daemons' output after it."""

    def __str__(self) -> str:
        return self.args[0]
