"""
The master's side of worker processes: start N of them, replace one that
dies (with a growing delay when it keeps dying), and drain them all on
stop.

:func:`spawn_worker` starts one process (``python -m
kongacme.workers.worker``, forked by the master's warm zygote on Linux:
:mod:`kongacme.workers.zygote`) with its AMP channel on a UNIX socketpair and
the listening TLS sockets as inherited file descriptors;
:class:`WorkerSupervisor` keeps N of them running, and starts a new generation of them when the listening
sockets change (:meth:`WorkerSupervisor.renew`).
"""

from __future__ import annotations

import os
import socket
import sys
from typing import Any, Callable, Sequence

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory, ProcessProtocol
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure

import kongacme
from kongacme.workers import channel
from kongacme.workers.logrelay import relay_line
from kongacme.workers.zygote import spawner_for

#: Seconds the workers get to finish their connections on stop.
DRAIN_DEADLINE = 10.0

#: Seconds after the drain deadline before a worker still running is killed.
KILL_GRACE = 2.0

#: Environment variables of systemd socket activation, which name the
#: master's sockets, not a worker's.
_SYSTEMD_VARIABLES = ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")


@attrs.define
class Backoff:
    """
    The delay before replacing a worker that died: ``initial`` after a
    worker that ran ``reset_after`` seconds or more, doubling for each
    worker of the slot that dies sooner, at most ``maximum``.
    """

    initial: float = 0.5
    maximum: float = 30.0
    reset_after: float = 60.0
    _quick_deaths: int = 0

    def delay(self, lived: float) -> float:
        """The delay after a worker that lived ``lived`` seconds died."""
        if lived >= self.reset_after:
            self._quick_deaths = 0
        self._quick_deaths += 1
        return min(self.maximum, self.initial * 2 ** (self._quick_deaths - 1))


def describe_exit(reason: Failure) -> str:
    """``exited with status 0``, ``was killed by signal 9`` …, from ``processEnded``'s reason."""
    value = reason.value
    if isinstance(value, (ProcessDone, ProcessTerminated)):
        if value.signal is not None:
            return "was killed by signal %d" % (value.signal,)
        return "exited with status %s" % (value.exitCode,)
    return "ended (%s)" % (reason.getErrorMessage(),)


class WorkerProcess(ProcessProtocol):
    """
    One worker process: relays its log lines, and fires :attr:`ended` with
    :func:`describe_exit`'s text when it is gone.

    :ivar slot: the worker's number, 1…N (a replacement keeps it).
    :ivar channel: the master's end of its AMP channel.
    :ivar accepting: fired (by the master) once the worker accepts.
    """

    log = Logger()

    def __init__(self, slot: int, clock: IReactorTime):
        self.slot = slot
        self._clock = clock
        self.channel: amp.AMP | None = None
        self.ended: Deferred = Deferred()
        self.accepting: Deferred = Deferred()
        self.pid: int | None = None
        self._buffers = {1: b"", 2: b""}

    def connectionMade(self) -> None:
        self.pid = self.transport.pid

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        buffered = self._buffers.get(childFD, b"") + data
        *lines, rest = buffered.split(b"\n")
        self._buffers[childFD] = rest[-65536:]
        for line in lines:
            relay_line(line, self.slot)

    def processEnded(self, reason: Failure) -> None:
        for rest in self._buffers.values():
            if rest:
                relay_line(rest, self.slot)
        self.ended.callback(describe_exit(reason))

    def signal(self, name: str) -> None:
        """Send signal ``name`` (``"KILL"``, ``"TERM"``) if still running."""
        if not self.ended.called:
            try:
                self.transport.signalProcess(name)
            except Exception:
                pass

    def drain(self, deadline: float) -> Deferred:
        """
        Tell the worker to stop accepting and finish its connections within
        ``deadline`` seconds; killed if still running ``KILL_GRACE`` later.

        :return: :attr:`ended`'s result, once it has ended.
        """
        if self.ended.called:
            return succeed(None)
        killer = self._clock.callLater(deadline + KILL_GRACE, self.signal, "KILL")

        def answered(_: object) -> None:
            # The worker exits once its channel closes.
            if self.channel is not None and self.channel.transport is not None:
                self.channel.transport.loseConnection()

        if self.channel is not None:
            self.channel.callRemote(channel.Drain, deadline=deadline).addBoth(answered)
        else:
            self.signal("TERM")
        done: Deferred = Deferred()

        def ended(result: object) -> object:
            if killer.active():
                killer.cancel()
            done.callback(None)
            return result

        self.ended.addBoth(ended)
        return done


class _One(Factory):
    """A factory for one already-built protocol (an adopted connection)."""

    def __init__(self, protocol: Any):
        self._protocol = protocol

    def buildProtocol(self, addr: Any) -> Any:
        return self._protocol


def worker_environment() -> dict[str, str]:
    """The master's environment for a worker, with kongacme importable and no systemd socket variables."""
    env = {k: v for k, v in os.environ.items() if k not in _SYSTEMD_VARIABLES}
    here = os.path.dirname(os.path.dirname(os.path.abspath(kongacme.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH")) if p)
    return env


def spawn_worker(
    reactor: Any, slot: int, listening: Sequence[tuple[int, socket.AddressFamily, bool]], make_channel: Callable
) -> WorkerProcess:
    """
    Start worker ``slot``.

    :param listening: ``(file descriptor, family, PROXY protocol)`` of the
        master's listening TLS sockets; the worker inherits them as 4, 5, …
        (and reads a PROXY header first on those marked so).
    :param make_channel: ``(WorkerProcess) -> amp.AMP``, the master's end
        of the channel (connected before the process starts, so what it
        sends waits in the socket).
    """
    process = WorkerProcess(slot, reactor)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        process.channel = make_channel(process)
        reactor.adoptStreamConnection(ours.fileno(), socket.AF_UNIX, _One(process.channel))
        args = [sys.executable, "-m", "kongacme.workers.worker", "--slot", str(slot), "--master-pid", str(os.getpid())]
        child_fds: dict[int, Any] = {0: "w", 1: "r", 2: "r", 3: theirs.fileno()}
        for number, (fd, family, proxied) in enumerate(listening, 4):
            child_fds[number] = fd
            args += ["--listen", "%d:%s%s" % (number, family.name, ":proxy" if proxied else "")]
        environment = worker_environment()
        spawner_for(reactor, environment).spawnProcess(
            process, sys.executable, args, env=environment, childFDs=child_fds
        )
    finally:
        ours.close()
        theirs.close()
    return process


class WorkerSupervisor(Service):
    """
    Keeps ``count`` workers running: a worker that dies is logged and
    replaced after its slot's :class:`Backoff` delay; on stop every worker
    is drained (:meth:`WorkerProcess.drain`). :meth:`renew` replaces every
    worker by a new one (new listening sockets), draining the old one once
    its successor accepts.

    :param clock: timers and "now".
    :param count: workers to run.
    :param spawn: ``slot -> WorkerProcess`` (:func:`spawn_worker` with its
        other arguments bound).
    :param on_ended: called with each :class:`WorkerProcess` that ended.
    :param drain_deadline: seconds the workers get to finish on stop.

    :ivar processes: the running worker of each slot (the newest
        generation's).
    :ivar superseded: workers of an older generation, still running.
    :ivar restarts: workers replaced since start (after dying).
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        count: int,
        spawn: Callable[[int], WorkerProcess],
        on_ended: Callable[[WorkerProcess], None] = lambda process: None,
        drain_deadline: float = DRAIN_DEADLINE,
    ):
        self._clock = clock
        self.count = count
        self._spawn = spawn
        self._on_ended = on_ended
        self.drain_deadline = drain_deadline
        self.processes: dict[int, WorkerProcess] = {}
        self.backoffs = {slot: Backoff() for slot in range(1, count + 1)}
        self.restarts = 0
        self.superseded: dict[WorkerProcess, Deferred | None] = {}
        self._pending: dict[int, Any] = {}
        self._stopping = False

    def startService(self) -> None:
        super().startService()
        self._stopping = False
        for slot in range(1, self.count + 1):
            self._start(slot)

    def _start(self, slot: int) -> None:
        self._pending.pop(slot, None)
        if self._stopping:
            return
        try:
            process = self._spawn(slot)
        except Exception:
            self.log.failure("could not start worker {slot}", slot=slot)
            self._schedule(slot, self.backoffs[slot].delay(0.0))
            return
        self.processes[slot] = process
        started = self._clock.seconds()
        self.log.info("worker {slot} started (pid {pid})", slot=slot, pid=process.pid)
        process.ended.addCallback(self._ended, slot, process, started)
        accepting = getattr(process, "accepting", None)
        if accepting is not None:
            accepting.addCallback(self._accepting, slot, process)

    def renew(self) -> None:
        """
        Start a new generation: a new worker in every slot (the spawn
        function gives it the listening sockets of now); each old one is
        drained once its slot's new worker accepts, so a slot never stops
        serving. A slot waiting to replace a dead worker just does so.
        """
        for slot in range(1, self.count + 1):
            if slot in self._pending or self._stopping:
                continue
            old = self.processes.pop(slot, None)
            if old is not None:
                self.superseded[old] = None
            self._start(slot)

    def _accepting(self, _: object, slot: int, process: WorkerProcess) -> None:
        if self.processes.get(slot) is not process:
            return  # superseded meanwhile: drained when its successor accepts
        for old, draining in list(self.superseded.items()):
            if old.slot == slot and draining is None:
                self.log.info("worker {slot} (pid {pid}) of the previous generation draining",
                              slot=slot, pid=old.pid)
                self.superseded[old] = old.drain(self.drain_deadline)

    def _ended(self, status: str, slot: int, process: WorkerProcess, started: float) -> None:
        if process in self.superseded:
            del self.superseded[process]
            self._on_ended(process)
            self.log.info("worker {slot} (pid {pid}) of the previous generation {status}",
                          slot=slot, pid=process.pid, status=status)
            return
        if self.processes.get(slot) is process:
            del self.processes[slot]
        self._on_ended(process)
        if self._stopping:
            self.log.info("worker {slot} (pid {pid}) {status}", slot=slot, pid=process.pid, status=status)
            return
        delay = self.backoffs[slot].delay(self._clock.seconds() - started)
        self.restarts += 1
        self.log.warn(
            "worker {slot} (pid {pid}) {status}; starting a new one in {delay:.1f} s",
            slot=slot, pid=process.pid, status=status, delay=delay,
        )
        self._schedule(slot, delay)

    def _schedule(self, slot: int, delay: float) -> None:
        self._pending[slot] = self._clock.callLater(delay, self._start, slot)

    def stopService(self) -> Deferred:
        """Drain every worker; fires once all have exited."""
        super().stopService()
        self._stopping = True
        for call in self._pending.values():
            if call.active():
                call.cancel()
        self._pending.clear()
        if self.processes:
            self.log.info("draining {count} worker(s), up to {deadline:.0f} s",
                          count=len(self.processes), deadline=self.drain_deadline)
        draining = [p.drain(self.drain_deadline) for p in list(self.processes.values())]
        for old, drained in list(self.superseded.items()):
            draining.append(drained if drained is not None else old.drain(self.drain_deadline))
        return DeferredList(draining)
