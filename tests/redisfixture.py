"""
A real Redis (Debian's ``redis-server``) for the tests, started on
127.0.0.1 and a free port, with no persistence, and stopped by its PID.

Usage, in a reactor-backed ``twisted.trial.unittest.TestCase``::

    async def test_something(self):
        server = await RedisServer.start(self, password="s3cret")
        storage = server.storage(namespace="ns:")   # closed by a cleanup
        ...
        await server.stop()       # an outage
        await server.restart()    # same port, empty again
        await server.stop(save=True)  # an outage that keeps the data
        await server.restart()        # same port, the data loaded again
        server.command("PTTL", b"ns:key")  # raw, blocking, for checks

It starts in a few milliseconds, so one per test is affordable. Options:
a password for the ``default`` user, ACL users (``users={"alice": "pw"}``),
TLS with a throwaway CA (``tls=True``: the certificate names
:data:`TLS_SERVER_NAME`, the CA is in :attr:`RedisServer.ca_pem`).

For daemon or fleet tests, :meth:`RedisServer.storage_config` gives the
``storage_config.redis`` record pointing at it.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
from typing import Any, Mapping, Optional, Sequence

import attrs
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from kongacme.storage.redis import RedisStorage
from kongacme.testing import TestCA, write_certified_key
from tests.pebble import free_port, settle

REDIS_SERVER = "/usr/bin/redis-server"
#: Seconds Redis may take to answer PING after it was started.
START_TIMEOUT = 10.0
#: The name in the TLS server's certificate.
TLS_SERVER_NAME = "redis.test"


class RedisReplyError(Exception):
    """An error reply (``-ERR ...``) to :meth:`RedisServer.command`."""


def _read_reply(f: Any) -> Any:
    line = f.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError("connection closed by Redis")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RedisReplyError(rest.decode("utf-8", "replace"))
    if kind == b":":
        return int(rest)
    if kind == b"$":
        length = int(rest)
        if length < 0:
            return None
        data = f.read(length + 2)
        return data[:-2]
    if kind == b"*":
        count = int(rest)
        return None if count < 0 else [_read_reply(f) for _ in range(count)]
    raise ConnectionError(f"unexpected reply {line!r}")


def _encode(*args: Any) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode("utf-8")
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class _RedisProcess(ProcessProtocol):
    def __init__(self) -> None:
        self.output = b""
        self.ended: Deferred[None] = Deferred()
        self.running = True

    def outReceived(self, data: bytes) -> None:
        self.output = (self.output + data)[-200_000:]

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        self.running = False
        self.ended.callback(None)


@attrs.define
class RedisServer:
    """
    A running ``redis-server``.

    :ivar port: its port on 127.0.0.1 (kept across :meth:`restart`).
    :ivar password: the ``default`` user's password, or ``None``.
    :ivar users: ACL users and their passwords.
    :ivar tls: whether it speaks TLS only.
    :ivar ca_pem: the CA that issued its certificate (``tls``), PEM.
    :ivar workdir: its working directory (and ``redis.log``).
    """

    test_case: TestCase = attrs.field(repr=False)
    port: int
    password: Optional[str]
    users: Mapping[str, str]
    tls: bool
    ca_pem: Optional[bytes]
    workdir: str
    _args: list[str] = attrs.field(repr=False)
    _process: Any = attrs.field(default=None, repr=False)
    _protocol: Optional[_RedisProcess] = attrs.field(default=None, repr=False)
    _saved: bool = attrs.field(default=False, repr=False)

    @classmethod
    def start(
        cls,
        test_case: TestCase,
        password: Optional[str] = None,
        *,
        users: Optional[Mapping[str, str]] = None,
        tls: bool = False,
        extra_args: Sequence[str] = (),
    ) -> Deferred["RedisServer"]:
        """
        Start Redis for ``test_case``; a cleanup stops it.

        :param password: ``requirepass`` (the ``default`` user's password).
        :param users: ACL users allowed everything, ``{name: password}``.
        :param tls: TLS only, with a certificate for
            :data:`TLS_SERVER_NAME` from a new CA (:attr:`ca_pem`).
        :param extra_args: more ``redis-server`` arguments.
        :return: ``Deferred`` firing with the server once it answers PING.
        """
        workdir = os.path.abspath(test_case.mktemp())
        os.makedirs(workdir)
        args = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--daemonize", "no"]
        args += ["--dir", workdir, "--logfile", os.path.join(workdir, "redis.log")]
        if password is not None:
            args += ["--requirepass", password]
        for name, secret in (users or {}).items():
            args += ["--user", name, "on", ">" + secret, "~*", "&*", "+@all"]
        ca_pem = None
        if tls:
            ca = TestCA.create("kongacme Redis test CA")
            ca_pem = ca.ca_pem()
            cert_path, key_path = write_certified_key(ca.issue([TLS_SERVER_NAME]), workdir, "redis")
            args += ["--tls-cert-file", cert_path, "--tls-key-file", key_path]
            ca_path = ca.write_ca(os.path.join(workdir, "ca.pem"))
            args += ["--tls-ca-cert-file", ca_path, "--tls-auth-clients", "no"]
        args += list(extra_args)

        async def launch() -> RedisServer:
            # A "free" port may be taken between the probe and Redis's bind:
            # then Redis exits and we try another.
            for _ in range(3):
                server = cls(
                    test_case, free_port(), password, dict(users or {}), tls, ca_pem, workdir, args
                )
                test_case.addCleanup(server.stop)
                if await server._launch():
                    return server
                await server.stop()
            raise RuntimeError("redis-server did not start:\n" + server.output)

        return Deferred.fromCoroutine(launch())

    @property
    def pid(self) -> Optional[int]:
        """The running process's id, or ``None``."""
        return self._process.pid if self.running else None

    @property
    def running(self) -> bool:
        return self._protocol is not None and self._protocol.running

    @property
    def output(self) -> str:
        """What Redis wrote to its log so far."""
        try:
            with open(os.path.join(self.workdir, "redis.log"), "rb") as f:
                return f.read()[-20_000:].decode("utf-8", "replace")
        except OSError:
            return ""

    async def _launch(self) -> bool:
        port_args = ["--port", "0", "--tls-port", str(self.port)] if self.tls else ["--port", str(self.port)]
        self._protocol = _RedisProcess()
        self._process = reactor.spawnProcess(
            self._protocol,
            REDIS_SERVER,
            [REDIS_SERVER, *port_args, *self._args],
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            path=self.workdir,
        )
        deadline = reactor.seconds() + START_TIMEOUT
        while self._protocol.running and reactor.seconds() < deadline:
            try:
                self.command("PING", auth=False)
                return True
            except RedisReplyError as e:
                if str(e).startswith("NOAUTH"):
                    return True
            except OSError:
                pass
            await deferLater(reactor, 0.01, lambda: None)
        return False

    def stop(self, save: bool = False) -> Deferred[None]:
        """
        Stop Redis by its PID and wait until it is gone. SIGKILL: there is
        nothing to save, and SIGTERM takes Redis a tenth of a second.

        :param save: ``SHUTDOWN SAVE`` instead (a snapshot in
            :attr:`workdir`, SIGKILL only if it has not exited within
            5 s), so that :meth:`restart` comes back with the data, as a
            Redis with persistence does.
        """

        async def stop() -> None:
            protocol = self._protocol
            if protocol is not None and protocol.running:
                self._saved = save
                if save:
                    try:
                        # Redis exits without a reply: the read fails.
                        self.command("SHUTDOWN", "SAVE", timeout=5.0)
                    except (OSError, RedisReplyError):
                        pass
                    timer = reactor.callLater(5.0, self._kill)
                    await protocol.ended
                    if timer.active():
                        timer.cancel()
                else:
                    self._process.signalProcess("KILL")
                    await protocol.ended
            await settle()

        return Deferred.fromCoroutine(stop())

    def _kill(self) -> None:
        if self._protocol is not None and self._protocol.running:
            self._process.signalProcess("KILL")

    def restart(self) -> Deferred[None]:
        """
        Stop Redis if running and start it again on the same port: empty
        (there is no persistence), unless the last :meth:`stop` was
        ``save=True``; then with the data it had.
        """

        async def restart() -> None:
            await self.stop()
            if not self._saved:
                try:
                    os.remove(os.path.join(self.workdir, "dump.rdb"))
                except FileNotFoundError:
                    pass
            if not await self._launch():
                raise RuntimeError("redis-server did not restart:\n" + self.output)

        return Deferred.fromCoroutine(restart())

    def pause(self) -> None:
        """SIGSTOP: connections stay open but nothing is answered."""
        os.kill(self._process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        os.kill(self._process.pid, signal.SIGCONT)

    def command(self, *args: Any, auth: bool = True, timeout: float = 2.0) -> Any:
        """
        Run one command on a new connection, synchronously (blocking
        briefly; for checks in tests), as the ``default`` user.

        :return: the reply: ``str`` (status), ``bytes``, ``int``, ``list``
            or ``None``.
        :raises RedisReplyError: on an error reply.
        :raises OSError: if Redis does not answer.
        """
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        if self.tls:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            raw = context.wrap_socket(raw, server_hostname=TLS_SERVER_NAME)
        with raw, raw.makefile("rb") as f:
            if auth and self.password is not None:
                raw.sendall(_encode("AUTH", self.password))
                _read_reply(f)
            raw.sendall(_encode(*args))
            return _read_reply(f)

    def storage(self, reactor_: Any = None, **kwargs: Any) -> RedisStorage:
        """
        A :class:`RedisStorage` for this server (password and TLS filled
        in; ``kwargs`` override), closed by a cleanup of the test.
        """
        settings: dict[str, Any] = {"host": "127.0.0.1", "port": self.port, "password": self.password}
        if self.tls:
            settings.update(ssl=True, server_name=TLS_SERVER_NAME)
        settings.update(kwargs)
        storage = RedisStorage(reactor_ if reactor_ is not None else reactor, **settings)
        self.test_case.addCleanup(storage.close)
        return storage

    def storage_config(self, **extra: Any) -> dict[str, Any]:
        """
        The ``storage_config.redis`` record for this server, as a daemon
        config holds it (``extra`` added, e.g. ``extra_options``).
        """
        config: dict[str, Any] = {"host": "127.0.0.1", "port": self.port}
        if self.password is not None:
            config["password"] = self.password
        if self.tls:
            config.update(ssl=True, server_name=TLS_SERVER_NAME)
        config.update(extra)
        return config
