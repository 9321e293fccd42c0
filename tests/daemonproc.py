"""
Run a real ``twistd -n kongacme`` child process for the tests, with a
config written to a temporary directory.
"""

from __future__ import annotations

import os
import signal
import socket
import sys

import yaml
from twisted.internet import reactor
from twisted.python.failure import Failure
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TWISTD = "from twisted.scripts.twistd import run; run()"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
            env=child_env(),
            path=REPO,
        )
        for _ in range(200):
            if self.collector.ended.called:
                raise RuntimeError("twistd exited:\n" + self.output)
            try:
                socket.create_connection(("127.0.0.1", wait_port), timeout=0.2).close()
                return
            except OSError:
                yield deferLater(reactor, 0.05, lambda: None)
        raise RuntimeError("daemon did not listen:\n" + self.output)

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
