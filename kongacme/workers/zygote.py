"""
Workers forked from a warm zygote instead of exec'd one by one.

An exec'd worker spends ~31 MiB of private memory on the heap of its
imports (Twisted, pyOpenSSL, cryptography, kongacme's TLS and proxy code).
The zygote, ``python -m kongacme.workers.zygote``, is exec'd once by the
master; it imports what a worker imports, runs ``gc.freeze()`` (so the
collector never writes to those objects again) and then forks a worker on
each request: the workers share the imported heap copy-on-write, and an
extra worker costs ~8 MiB instead of ~31 (bench/worker_fork.py).

The master still supervises every worker as before: :class:`Zygote` offers
the part of ``IReactorProcess.spawnProcess`` that
:func:`kongacme.workers.supervisor.spawn_worker` uses, so the worker's
:class:`~kongacme.workers.supervisor.WorkerProcess` gets its pid, its log
lines (standard output and error on socketpairs), its signals and its exit
status (the zygote reaps it and reports) exactly as from a process the
master spawned. The file descriptors a worker inherits (its channel, the
listening sockets) travel to the zygote with ``SCM_RIGHTS``.

Lifetimes: the zygote asks the kernel for ``SIGKILL`` when the master dies
and exits when its control socket closes; a worker asks for ``SIGTERM``
when its parent (the zygote) dies, so no worker outlives the master. The
zygote ignores ``SIGTERM`` and ``SIGINT`` (systemd signals every process of
the unit; the workers drain on theirs), so it outlives its draining workers.

Control socket (``SOCK_SEQPACKET``, descriptor 3 in the zygote): the
master sends one JSON request per packet and reads the answer before it
sends another; the zygote reports each worker's end as a JSON line on its
descriptor 4.
"""

from __future__ import annotations

import errno
import fcntl
import gc
import json
import os
import select
import signal
import socket
import sys
import traceback
from typing import Any, Sequence

from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

#: The control socket's descriptor in the zygote.
CONTROL_FD = 3

#: The descriptor the zygote writes end reports on.
REPORT_FD = 4

#: The only module the zygote runs (``python -m`` of it).
WORKER_MODULE = "kongacme.workers.worker"

#: What a worker imports later, imported by the zygote too so that the
#: workers share it: the configuration classes (``channel.worker_settings``
#: at the worker's first ``Configure``, with yaml) and the reactor module.
PRELOAD = {WORKER_MODULE: ("kongacme.config.daemon", "twisted.internet.epollreactor")}

#: Seconds the master waits for the zygote's answer (its first one comes
#: once it has imported the worker's modules).
ANSWER_TIMEOUT = 30.0

_PR_SET_PDEATHSIG = 1

log = Logger()


class ZygoteError(Exception):
    """The zygote did not answer, or refused a request (``reason``)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


# -- the master's side --------------------------------------------------------------------------


class _Relay(Protocol):
    """A forked worker's standard output or error, read by the master."""

    def __init__(self, worker: "_ForkedWorker", fd: int):
        self._worker = worker
        self._fd = fd

    def dataReceived(self, data: bytes) -> None:
        self._worker.protocol.childDataReceived(self._fd, data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._worker.part_ended(self._fd)


class _One(Factory):
    def __init__(self, protocol: Protocol):
        self._protocol = protocol

    def buildProtocol(self, addr: Any) -> Protocol:
        return self._protocol


class _ForkedWorker:
    """
    The transport of a worker forked by the zygote, as its
    ``ProcessProtocol`` sees it: ``pid`` and ``signalProcess``. The
    protocol's ``processEnded`` comes once the zygote reported the exit
    and both of its output sockets are closed (no log line is lost).
    """

    def __init__(self, zygote: "Zygote", protocol: ProcessProtocol, pid: int):
        self._zygote = zygote
        self.protocol = protocol
        self.pid = pid
        self._waiting = {"status", 1, 2}
        self._reason: Failure | None = None

    def signalProcess(self, name: str | int) -> None:
        """Send ``name`` (``"KILL"``, ``"TERM"``, ``"INT"`` or a number) through the zygote."""
        if self._reason is not None or "status" not in self._waiting:
            raise ProcessExitedAlready()
        number = name if isinstance(name, int) else getattr(signal, "SIG" + name)
        if not self._zygote.request({"op": "signal", "pid": self.pid, "signal": int(number)}).get("sent"):
            raise ProcessExitedAlready()

    def ended(self, status: int | None) -> None:
        """The zygote reaped it (``status`` as ``waitpid`` gives it), or is gone (``None``)."""
        if status is None:
            reason = Failure(ProcessTerminated(None, signal.SIGTERM, None))
        elif os.WIFSIGNALED(status):
            reason = Failure(ProcessTerminated(None, os.WTERMSIG(status), status))
        elif os.waitstatus_to_exitcode(status) == 0:
            reason = Failure(ProcessDone(status))
        else:
            reason = Failure(ProcessTerminated(os.waitstatus_to_exitcode(status), None, status))
        self._reason = reason
        self.part_ended("status")

    def part_ended(self, part: Any) -> None:
        self._waiting.discard(part)
        if not self._waiting and self._reason is not None:
            reason, self._reason = self._reason, None
            self.protocol.processEnded(reason)


class _ZygoteProcess(ProcessProtocol):
    """The zygote process: its end reports (descriptor 4) and its own output."""

    def __init__(self, zygote: "Zygote"):
        self._zygote = zygote
        self._buffer = b""
        self.ended: Deferred = Deferred()

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD != REPORT_FD:
            for line in data.decode("utf-8", "replace").splitlines():
                log.warn("worker zygote: {line}", line=line)
            return
        *lines, self._buffer = (self._buffer + data).split(b"\n")
        for line in lines:
            report = json.loads(line)
            self._zygote.reaped(report["pid"], report["status"])

    def processEnded(self, reason: Failure) -> None:
        self._zygote.gone(self, reason)
        self.ended.callback(None)


class Zygote:
    """
    The master's handle on its zygote, started on the first
    :meth:`spawnProcess` (and again after it died). Spawning blocks the
    master for the zygote's answer: a fork, ~1-5 ms; the first one also
    waits for the zygote's imports (~0.5 s, once).

    :param reactor: the master's reactor (``IReactorProcess``,
        ``IReactorSocket``).
    :param env: the zygote's environment (the workers inherit it).
    :param module: what the zygote imports and runs in each child (its
        ``main(args)``): the worker (tests use a small stand-in).
    """

    def __init__(self, reactor: Any, env: dict[str, str], module: str = WORKER_MODULE):
        self._reactor = reactor
        self._env = env
        self._module = module
        self._control: socket.socket | None = None
        self._process: _ZygoteProcess | None = None
        self._workers: dict[int, _ForkedWorker] = {}

    @property
    def running(self) -> bool:
        """Whether a zygote process is up."""
        return self._control is not None

    @property
    def pid(self) -> int | None:
        """The zygote's pid while it runs."""
        transport = self._process.transport if self._process is not None else None
        return transport.pid if transport is not None else None

    def stop(self) -> Deferred:
        """Kill the zygote (its workers end with it); fires once it has ended."""
        process = self._process
        if process is None or process.transport is None:
            return succeed(None)
        ended = process.ended
        process.transport.signalProcess("KILL")
        return ended

    def _start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._process = _ZygoteProcess(self)
            self._reactor.spawnProcess(
                self._process,
                sys.executable,
                [sys.executable, "-m", "kongacme.workers.zygote", "--master-pid", str(os.getpid()),
                 "--module", self._module],
                env=self._env,
                childFDs={0: "w", 1: "r", 2: "r", CONTROL_FD: theirs.fileno(), REPORT_FD: "r"},
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.settimeout(ANSWER_TIMEOUT)
        self._control = ours

    def request(self, message: dict, fds: Sequence[int] = ()) -> dict:
        """
        Send one request (with ``fds``) and wait for its answer.

        :raises ZygoteError: when the zygote does not answer in time, or
            answers with an error.
        """
        if self._control is None:
            raise ZygoteError("the zygote is not running")
        try:
            socket.send_fds(self._control, [json.dumps(message).encode("utf-8")], list(fds))
            answer = self._control.recv(65536)
        except OSError as e:
            raise ZygoteError("no answer from the zygote (%s)" % (e,)) from None
        if not answer:
            raise ZygoteError("the zygote closed its control socket")
        decoded = json.loads(answer)
        if "error" in decoded:
            raise ZygoteError(decoded["error"])
        return decoded

    def spawnProcess(
        self, processProtocol: ProcessProtocol, executable: str, args: Sequence[str], env: Any = None,
        childFDs: dict[int, Any] | None = None,
    ) -> _ForkedWorker:
        """
        Fork ``python -m kongacme.workers.worker ARGS`` (the zygote's
        module) from the zygote, as
        ``reactor.spawnProcess`` would start it: ``childFDs`` maps the
        worker's descriptors to the master's (an int), ``"r"`` (read by the
        master: delivered to ``childDataReceived``) or ``"w"`` (standard
        input only: the worker's is ``/dev/null``). ``executable`` and
        ``env`` are the zygote's own.

        :raises ZygoteError: for anything else than a worker, or when the
            zygote fails.
        """
        args = list(args)
        if args[1:3] != ["-m", self._module]:
            raise ZygoteError("the zygote only starts %s, not %r" % (self._module, args[1:3]))
        if self._control is None:
            self._start()
        passed: list[int] = []
        targets: list[int] = []
        ours: dict[int, socket.socket] = {}
        theirs: list[socket.socket] = []
        try:
            for number, what in sorted((childFDs or {}).items()):
                if isinstance(what, int):
                    passed.append(what)
                elif what == "r":
                    mine, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
                    ours[number] = mine
                    theirs.append(child)
                    passed.append(child.fileno())
                elif what == "w" and number == 0:
                    continue
                else:
                    raise ZygoteError("descriptor %d: %r is not supported" % (number, what))
                targets.append(number)
            try:
                answer = self.request({"op": "spawn", "args": args[3:], "fds": targets}, passed)
            except ZygoteError:
                self._abandon()
                raise
        except BaseException:
            for sock in ours.values():
                sock.close()
            raise
        finally:
            for sock in theirs:
                sock.close()
        worker = _ForkedWorker(self, processProtocol, answer["pid"])
        self._workers[worker.pid] = worker
        for number in (1, 2):
            if number not in ours:
                worker.part_ended(number)
        for number, sock in ours.items():
            self._reactor.adoptStreamConnection(sock.fileno(), socket.AF_UNIX, _One(_Relay(worker, number)))
            sock.close()
        processProtocol.makeConnection(worker)
        return worker

    def reaped(self, pid: int, status: int) -> None:
        """The zygote's report: worker ``pid`` ended with ``status``."""
        worker = self._workers.pop(pid, None)
        if worker is not None:
            worker.ended(status)

    def gone(self, process: _ZygoteProcess, reason: Failure) -> None:
        """The zygote exited: its workers die with it (their parent-death signal)."""
        if process is not self._process:
            return
        log.warn("the worker zygote ended ({reason}); its workers end with it", reason=reason.getErrorMessage())
        self._abandon()

    def _abandon(self) -> None:
        if self._control is not None:
            self._control.close()
            self._control = None
        self._process = None
        workers, self._workers = self._workers, {}
        for worker in workers.values():
            worker.ended(None)


_zygotes: dict[int, Zygote] = {}

#: ``KONGACME_WORKER_START=exec`` starts every worker with its own exec
#: instead (to compare, or where fork is unwelcome).
START_VARIABLE = "KONGACME_WORKER_START"


def spawner_for(reactor: Any, env: dict[str, str]) -> Any:
    """
    What starts this master's workers: its :class:`Zygote` (one per
    reactor) on Linux, else (or with ``KONGACME_WORKER_START=exec``) the
    reactor itself.
    """
    if not sys.platform.startswith("linux") or os.environ.get(START_VARIABLE) == "exec":
        return reactor
    found = _zygotes.get(id(reactor))
    if found is None:
        found = _zygotes[id(reactor)] = Zygote(reactor, env)
    return found


# -- the zygote ---------------------------------------------------------------------------------


def _die_with_master(master_pid: int) -> None:
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the control socket's end still stops the zygote
    if os.getppid() != master_pid:
        sys.exit(0)


def _place(fds: Sequence[int], targets: Sequence[int]) -> None:
    """In a forked child: received ``fds`` become ``targets``; nothing else above 2 stays open."""
    low = max(list(targets) + [2]) + 1
    # Above every target first, so no dup2 below overwrites a source.
    moved = [fcntl.fcntl(fd, fcntl.F_DUPFD, low + len(fds)) for fd in fds]
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    for fd, target in zip(moved, targets):
        os.dup2(fd, target)
    os.closerange(low, os.sysconf("SC_OPEN_MAX") if hasattr(os, "sysconf") else 65536)
    if null not in targets and null > 2:
        try:
            os.close(null)
        except OSError:
            pass


def _run_worker(module: Any, args: list[str], fds: Sequence[int], targets: Sequence[int]) -> None:
    """The forked child: run ``module.main(args)`` (never returns)."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        _place(fds, targets)
        sys.argv = [module.__name__] + args
        module.main(args)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code)


def _with_parent(args: list[str]) -> list[str]:
    """The worker follows its parent's death: here the zygote's, not the master's."""
    out = list(args)
    if "--master-pid" in out:
        out[out.index("--master-pid") + 1] = str(os.getpid())
    return out


def serve(control: socket.socket, reports: int, module: Any) -> None:
    """The zygote's loop: fork ``module`` on request, reap and report, until the master closes ``control``."""
    children: set[int] = set()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)

    def reap() -> None:
        while children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            children.discard(pid)
            os.write(reports, json.dumps({"pid": pid, "status": status}).encode("ascii") + b"\n")

    while True:
        ready, _, _ = select.select([control.fileno(), wake_r], [], [])
        if wake_r in ready:
            try:
                os.read(wake_r, 4096)
            except BlockingIOError:
                pass
            reap()
        if control.fileno() not in ready:
            continue
        try:
            data, fds, _, _ = socket.recv_fds(control, 65536, 64)
        except OSError as e:
            if e.errno == errno.EINTR:
                continue
            raise
        if not data:
            return
        request = json.loads(data)
        try:
            if request.get("op") == "spawn":
                args = _with_parent(request["args"])
                sys.stdout.flush()
                sys.stderr.flush()
                pid = os.fork()
                if pid == 0:
                    control.close()
                    _run_worker(module, args, fds, request["fds"])
                children.add(pid)
                answer: dict = {"pid": pid}
            elif request.get("op") == "signal":
                sent = request["pid"] in children
                if sent:
                    os.kill(request["pid"], request["signal"])
                answer = {"sent": sent}
            else:
                answer = {"error": "unknown request %r" % (request.get("op"),)}
        except Exception as e:
            answer = {"error": "%s: %s" % (type(e).__name__, e)}
        finally:
            for fd in fds:
                os.close(fd)
        control.send(json.dumps(answer).encode("utf-8"))
        reap()


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m kongacme.workers.zygote --master-pid PID [--module M]``: import, freeze, serve."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m kongacme.workers.zygote")
    parser.add_argument("--master-pid", type=int, required=True)
    parser.add_argument("--module", default=WORKER_MODULE)
    options = parser.parse_args(sys.argv[1:] if argv is None else argv)
    _die_with_master(options.master_pid)
    # systemd signals every process of the unit: the workers drain on
    # their SIGTERM, and need their parent alive meanwhile.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import importlib

    module = importlib.import_module(options.module)
    for name in PRELOAD.get(options.module, ()):
        importlib.import_module(name)
    gc.collect()
    gc.freeze()
    control = socket.socket(fileno=CONTROL_FD)
    serve(control, REPORT_FD, module)


if __name__ == "__main__":
    main()
