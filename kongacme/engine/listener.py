"""
The lean engine's side of a TLS listening port: Twisted opened it (so
endpoints, reload and the workers' inherited sockets work as they do), the
engine accepts on it.

:class:`LeanPort` stops the Twisted port's reading and registers a duplicate
of its socket on the engine's epoll; it is what the listener set and the
connection limits (:mod:`kongacme.connlimit`) hold, so pausing the listener
at its cap stops the engine's accepting.
"""

from __future__ import annotations

import errno
import os
import socket
from select import EPOLLIN
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from zope.interface import implementer

from kongacme.engine.sockets import NONBLOCKING_STREAM
from kongacme.interfaces import IPollHandler

if TYPE_CHECKING:
    from kongacme.engine.lean import LeanEngine

log = Logger()

#: Connections accepted per readable event at most (then other sockets get a turn).
ACCEPT_BATCH = 64

#: ``accept`` errors that concern one connection only: go on accepting.
_TRANSIENT = (errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.ENETDOWN, errno.ENOPROTOOPT, errno.EHOSTDOWN)


@implementer(IListeningPort, IPollHandler)
class LeanPort:
    """
    Accepts on ``port``'s socket for the lean engine.

    :param port: a listening ``tcp.Port`` (``IListeningPort`` with
        ``fileno``, ``startReading``/``stopReading``).
    :param serving: the factory Twisted would have served the port with
        (limits included): connections handed over are adopted with it.
    :param limit: the listener's :class:`~kongacme.connlimit.ListenerLimit`, or ``None``.
    """

    def __init__(self, engine: "LeanEngine", port: Any, serving: Any, limit: Any):
        self._engine = engine
        self._port = port
        self.serving = serving
        self.limit = limit
        self.disconnecting = False
        port.stopReading()  # Twisted never accepts on it
        self._sock: socket.socket | None = socket.socket(fileno=os.dup(port.fileno()))
        self._sock.setblocking(False)
        self._fd = self._sock.fileno()
        self._family = int(self._sock.family)
        #: kongacme.engine._steady's accept (accept4: non-blocking at once,
        #: and no socket object made twice), or None where it is not built.
        self._accept = engine.loop.compiled.accept if engine.loop.compiled is not None else None
        self._reading = False
        engine.loop.register(self._fd, 0, self)
        self.startReading()

    # -- what the listener set and the limits call --------------------------------

    def startReading(self) -> None:
        """Accept connections."""
        if not self._reading and self._sock is not None:
            self._reading = True
            self._engine.loop.modify(self._fd, EPOLLIN)

    def stopReading(self) -> None:
        """Leave new connections in the kernel's backlog."""
        if self._reading and self._sock is not None:
            self._reading = False
            self._engine.loop.modify(self._fd, 0)

    def startListening(self) -> None:
        """Listening already (Twisted opened the port)."""

    def stopListening(self) -> Deferred:
        """Stop accepting and close the port (connections stay)."""
        self.disconnecting = True
        sock, self._sock = self._sock, None
        if sock is not None:
            self._engine.loop.unregister(self._fd)
            sock.close()
        return maybeDeferred(self._port.stopListening)

    def getHost(self) -> Any:
        return self._port.getHost()

    # -- accepting -------------------------------------------------------------

    def on_events(self, fd: int, events: int) -> None:
        sock = self._sock
        limit = self.limit
        engine = self._engine
        for _ in range(ACCEPT_BATCH):
            if sock is None or not self._reading:
                return
            if limit is not None and not limit.take():
                return  # the limits pause this port until there is room
            try:
                if self._accept is not None:
                    accepted = self._accept(self._fd)
                    if accepted is None:
                        raise BlockingIOError
                    fd, peer = accepted
                    # The family given, no socket.accept's conversions (nor its ioctl).
                    client = socket.socket(self._family, NONBLOCKING_STREAM, 0, fd)
                else:
                    client, peer = sock.accept()
                    client.setblocking(False)
            except BlockingIOError:
                if limit is not None:
                    limit.release()
                return
            except OSError as e:
                if limit is not None:
                    limit.release()
                if e.errno in _TRANSIENT:
                    continue
                log.warn("TLS listener: accept failed: {error}", error=os.strerror(e.errno or 0))
                return
            engine.serve(client, peer, self)

    def abort(self) -> None:
        """An unexpected error while accepting: logged by the loop; keep listening."""
