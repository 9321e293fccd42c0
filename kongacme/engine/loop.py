"""
One ``select.epoll`` of kongacme's own for the lean engine's sockets,
registered with the Twisted reactor as a single reader.

Twisted's reactor wraps every ``doRead`` in a log context and goes through
its transport objects for each readable socket; here the reactor sees one
descriptor (the epoll's), and :meth:`EventLoop.doRead` polls it without
waiting and calls each ready socket's :class:`~kongacme.interfaces.IPollHandler`
itself. Timers, Deferreds and every other socket stay the reactor's.

Where the compiled module :mod:`kongacme.engine._steady` is built (the
default install builds it; it is optional), its ``dispatch`` does that loop
in C, and serves the relays in the steady state there (their sockets in
:attr:`EventLoop.steady`): see :mod:`kongacme.engine.relay`.
"""

from __future__ import annotations

import select
from typing import Any

import attrs
from twisted.internet.interfaces import IReadDescriptor
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from kongacme.engine.sockets import BULK_READ_SIZE, READ_SIZE
from kongacme.tls.session import CLOSED, TLS_ERROR, WANT_READ

try:
    from kongacme.engine import _steady as COMPILED
except ImportError:  # not built (no compiler or headers): all of it in Python
    COMPILED = None
else:
    COMPILED.configure(WANT_READ, CLOSED, TLS_ERROR, READ_SIZE, BULK_READ_SIZE)

log = Logger()

#: Events taken per ``epoll.poll`` call; the reactor calls again while more
#: are ready (its epoll is level-triggered on ours).
MAX_EVENTS = 256

#: Polls of the compiled dispatch per ``doRead``, while each finds events:
#: under load, the reactor's iteration around ``doRead`` (its timers, its
#: own ``epoll_wait``, the log context it calls each reader in) is paid once
#: per several batches rather than once per batch (bench/RESULTS.md,
#: session 21). The reactor's timers and other sockets wait at most this
#: many batches.
POLL_ROUNDS = 4


@implementer(IReadDescriptor)
@attrs.define(eq=False)
class EventLoop:
    """
    The lean engine's sockets, polled as one reader of ``reactor``.

    :param reactor: ``IReactorFDSet``; :meth:`start` adds the loop as a reader.
    :param compiled: :mod:`kongacme.engine._steady` (the default, where it is
        built) to dispatch in C, or None for the Python loop.
    :param poll_rounds: polls of the compiled dispatch per ``doRead``
        (:data:`POLL_ROUNDS`; the Python loop polls once).

    :ivar handlers: file descriptor → its :class:`IPollHandler`.
    :ivar steady: file descriptor → the ``_steady.Pair`` of a relay in the
        steady state, served by ``compiled`` (empty without it).
    """

    _reactor: Any
    compiled: Any = COMPILED
    poll_rounds: int = POLL_ROUNDS
    _epoll: Any = attrs.field(factory=select.epoll, init=False)
    handlers: dict[int, Any] = attrs.field(factory=dict, init=False)
    steady: dict[int, Any] = attrs.field(factory=dict, init=False)
    _running: bool = attrs.field(default=False, init=False)

    def start(self) -> None:
        """Have the reactor watch the epoll (idempotent)."""
        if not self._running:
            self._running = True
            self._reactor.addReader(self)

    def stop(self) -> None:
        """Stop watching (registered sockets stay registered)."""
        if self._running:
            self._running = False
            self._reactor.removeReader(self)

    def register(self, fd: int, events: int, handler: Any) -> None:
        """Call ``handler.on_events`` for ``events`` on ``fd``."""
        self._epoll.register(fd, events)
        self.handlers[fd] = handler

    def replace(self, fd: int, events: int, handler: Any) -> None:
        """Hand registered ``fd`` to ``handler``, watching ``events``."""
        self._epoll.modify(fd, events)
        self.handlers[fd] = handler

    def modify(self, fd: int, events: int) -> None:
        """Watch ``events`` on ``fd`` from now on (0: none, it stays registered)."""
        self._epoll.modify(fd, events)

    def unregister(self, fd: int) -> None:
        """
        Forget ``fd``. Always before closing it: an epoll entry lives as
        long as its open file description, which a duplicate (one handed to
        the reactor) keeps open.
        """
        self.steady.pop(fd, None)
        if self.handlers.pop(fd, None) is not None:
            try:
                self._epoll.unregister(fd)
            except OSError:
                pass

    def forget(self, fd: int) -> None:
        """
        Forget ``fd`` that is about to be closed and has no duplicate: the
        close takes it out of the epoll, so no ``epoll_ctl`` is spent on it.
        """
        self.steady.pop(fd, None)
        self.handlers.pop(fd, None)

    # -- IReadDescriptor ------------------------------------------------------

    def fileno(self) -> int:
        return self._epoll.fileno()

    def logPrefix(self) -> str:
        return "kongacme-engine"

    def doRead(self) -> None:
        """Dispatch every ready event; one handler's error ends its connection only."""
        compiled = self.compiled
        if compiled is not None:
            compiled.dispatch(self._epoll.fileno(), self.handlers, self.steady, MAX_EVENTS, self.failed, self.poll_rounds)
            return
        handlers = self.handlers
        for fd, events in self._epoll.poll(0, MAX_EVENTS):
            handler = handlers.get(fd)
            if handler is None:
                continue  # closed earlier in this batch
            try:
                handler.on_events(fd, events)
            except Exception as e:
                self.failed(handler, fd, e)

    def failed(self, handler: Any, fd: int, error: Exception) -> None:
        """An event for ``handler`` raised ``error``: log it, and end that connection."""
        log.failure(
            "engine: unexpected error on descriptor {fd}, closing its connection",
            Failure(error, type(error), error.__traceback__),
            fd=fd,
        )
        try:
            handler.abort()
        except Exception:
            log.failure("engine: error while aborting descriptor {fd}", fd=fd)

    def connectionLost(self, reason: Failure) -> None:
        """The reactor dropped the loop (shutdown)."""
        self._running = False

