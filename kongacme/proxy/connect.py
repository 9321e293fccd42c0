"""
Connecting to an upstream without Twisted's generic client machinery.

``reactor.connectTCP`` schedules its start with ``callLater(0)``, resolves
even an IP literal through ``resolveAddress`` and, behind an endpoint, adds a
Deferred chain and a wrapping factory: per proxied connection that is more
Python than the ``socket``/``connect`` it amounts to. :func:`connect_direct`
makes the non-blocking socket itself, waits for it to become writable
(``IReactorFDSet.addWriter``), reads ``SO_ERROR`` and hands the connected
socket to the reactor with ``IReactorSocket.adoptStreamConnection``: public
interfaces only.

Host names are resolved once and cached (:class:`NameCache`): a connection
to a name whose addresses are known connects at once; a stale entry is used
while it is refreshed in the background.
"""

from __future__ import annotations

import errno
import os
import socket
from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.internet.error import TimeoutError as ConnectTimeout
from twisted.internet.error import getConnectError
from twisted.internet.interfaces import IReadWriteDescriptor
from twisted.internet.protocol import Factory
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from kongacme.timers import Deadline, TimerWheel

log = Logger()

_IN_PROGRESS = (errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN)


@implementer(IReadWriteDescriptor)
class DirectConnect:
    """
    One non-blocking connect in flight; :meth:`cancel` abandons it.

    :param failed: called with a ``Failure`` if the connect fails or times
        out (not after :meth:`cancel`).
    """

    def __init__(
        self,
        reactor: Any,
        family: int,
        address: tuple[str, int],
        factory: Factory,
        failed: Callable[[Failure], object],
    ):
        self._reactor = reactor
        self._family = family
        self._factory = factory
        self._failed = failed
        self._deadline: Deadline | None = None
        self._socket: socket.socket | None = socket.socket(family, socket.SOCK_STREAM)
        self._socket.setblocking(False)
        self._address = address

    def start(self, wheel: TimerWheel, timeout: float) -> None:
        """Start connecting; fail after ``timeout`` seconds."""
        assert self._socket is not None
        code = self._socket.connect_ex(self._address)
        if code and code not in _IN_PROGRESS:
            self._finish(code)
            return
        self._deadline = wheel.call_later(timeout, self._timed_out)
        # Writable once connected, or once it failed (SO_ERROR says which).
        self._reactor.addWriter(self)

    def fileno(self) -> int:
        return self._socket.fileno() if self._socket is not None else -1

    def logPrefix(self) -> str:
        return "DirectConnect"

    def doRead(self) -> None:
        """Not registered for reading."""

    def doWrite(self) -> None:
        sock = self._socket
        if sock is None:
            return
        self._reactor.removeWriter(self)
        self._finish(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR))

    def connectionLost(self, reason: Failure) -> None:
        # The reactor reports a failed connect (EPOLLERR/EPOLLHUP without
        # EPOLLIN) here rather than in doWrite; SO_ERROR says why.
        sock = self._socket
        if sock is None:
            return
        self._reactor.removeWriter(self)
        self._finish(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) or errno.ECONNABORTED)

    def _finish(self, code: int) -> None:
        sock = self._socket
        self._cancel_deadline()
        if sock is None:
            return
        self._socket = None
        if code:
            sock.close()
            self._failed(Failure(getConnectError((code, os.strerror(code)))))
            return
        try:
            self._reactor.adoptStreamConnection(sock.fileno(), self._family, self._factory)
        finally:
            # adoptStreamConnection took a duplicate of the descriptor.
            sock.close()

    def _timed_out(self) -> None:
        self._deadline = None
        if self._socket is None:
            return
        self._close()
        self._failed(Failure(ConnectTimeout("connecting to %s:%d" % self._address[:2])))

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def cancel(self) -> None:
        """Abandon the attempt quietly."""
        self._cancel_deadline()
        self._close()

    def _close(self) -> None:
        sock, self._socket = self._socket, None
        if sock is not None:
            self._reactor.removeWriter(self)
            sock.close()


def family_of(host: str) -> int:
    """``AF_INET6`` for an IPv6 literal, else ``AF_INET``."""
    return socket.AF_INET6 if ":" in host else socket.AF_INET


class NameCache:
    """
    Upstream host names → addresses, from ``getaddrinfo`` in the reactor's
    thread pool, each kept ``ttl`` seconds (``getaddrinfo`` reports no DNS
    TTL). An expired entry is still answered while one background lookup
    refreshes it, so only a name's first connection waits for DNS.

    :param reactor: ``IReactorThreads`` and ``IReactorTime``.
    """

    def __init__(self, reactor: Any, ttl: float = 30.0):
        self._reactor = reactor
        self.ttl = ttl
        self._entries: dict[tuple[str, int], tuple[list[tuple[int, tuple]], float]] = {}
        self._lookups: dict[tuple[str, int], list[Deferred]] = {}

    def cached(self, host: str, port: int) -> list[tuple[int, tuple]] | None:
        """
        The known ``(family, sockaddr)`` pairs for ``host``, or ``None`` if
        it was never resolved; a stale entry starts a refresh.
        """
        key = (host, port)
        entry = self._entries.get(key)
        if entry is None:
            return None
        if self._reactor.seconds() >= entry[1] and key not in self._lookups:
            self.resolve(host, port).addErrback(
                lambda f: log.info("upstream name {host} did not resolve: {reason}", host=host, reason=f.value)
            )
        return entry[0]

    def resolve(self, host: str, port: int) -> Deferred:
        """Resolve ``host`` now (one lookup per name at a time); fires with the addresses."""
        key = (host, port)
        result: Deferred = Deferred()
        waiters = self._lookups.get(key)
        if waiters is not None:
            waiters.append(result)
            return result
        waiters = self._lookups[key] = [result]

        def addresses_of(infos: list) -> list[tuple[int, tuple]]:
            addresses = [(family, sockaddr[:2]) for family, _, _, _, sockaddr in infos]
            if not addresses:
                raise OSError("no addresses for %s" % (host,))
            self._entries[key] = (addresses, self._reactor.seconds() + self.ttl)
            return addresses

        def finished(outcome: object) -> None:
            del self._lookups[key]
            for waiter in waiters:
                if isinstance(outcome, Failure):
                    waiter.errback(outcome)
                else:
                    waiter.callback(outcome)

        lookup = deferToThreadPool(
            self._reactor, self._reactor.getThreadPool(), socket.getaddrinfo, host, port, 0, socket.SOCK_STREAM
        )
        lookup.addCallback(addresses_of).addBoth(finished)
        return result
