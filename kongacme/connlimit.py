"""
Connection limits, HAProxy style: a global ``max_connections`` and a cap
per listener (tls, http, admin). A listener at its cap stops accepting —
``stopReading()`` on its listening ports, so new connections wait in the
kernel's backlog instead of being accepted and failing — and starts again
as soon as a connection closes. A reserve of file descriptors is kept out
of the connection budget for storage, the CA, upstreams and logs, so the
process never reaches ``EMFILE`` (where Twisted's accept loop logs one line
per refused client and every listener fails at once).

Defaults come from ``RLIMIT_NOFILE`` (see :func:`derive_budget`).
"""

from __future__ import annotations

import resource
from typing import Any, Callable, Iterator, Mapping

import attrs
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from zope.interface import implementer

#: Listener kinds, in the order they are reported.
KINDS = ("tls", "http", "admin")

#: File descriptors a connection costs on each listener: a TLS connection
#: has its client and its upstream; port 80 has an upstream only in
#: ``http.mode: proxy``; the Admin API none.
FD_COSTS = {"tls": 2, "http": 1, "admin": 1}

#: Seconds a listener must stay below its cap before the "accepting again"
#: line is logged: under a flood, every close lets one waiting connection
#: in and the cap is hit again at once, which is one episode, not two
#: lines per connection.
SETTLE = 1.0


def open_file_limit(raise_to_hard: bool) -> tuple[int, int]:
    """
    The process's soft ``RLIMIT_NOFILE``, first raised to the hard limit
    when ``raise_to_hard`` (as HAProxy does at start; an unlimited hard
    limit is left alone).

    :return: ``(limit before, limit now)``.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    before = soft
    if raise_to_hard and hard != resource.RLIM_INFINITY and (soft == resource.RLIM_INFINITY or soft < hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return before, soft


def default_reserve(nofile: int) -> int:
    """
    File descriptors kept out of the connection budget: a sixteenth of the
    limit, at least 64, at most half of it.
    """
    return min(max(64, nofile // 16), nofile // 2)


@attrs.frozen
class Budget:
    """
    The limits in force.

    :ivar nofile: the process's open-file limit.
    :ivar reserve_fds: descriptors not given to client connections.
    :ivar max_connections: client connections on all listeners together.
    :ivar caps: connections per listener kind.
    :ivar fd_costs: descriptors one connection costs, per listener kind.
    """

    nofile: int
    reserve_fds: int
    max_connections: int
    caps: Mapping[str, int]
    fd_costs: Mapping[str, int]
    #: Descriptors client connections (and their upstreams) may use.
    fd_budget: int = attrs.field(init=False)
    #: The most descriptors one connection of any kind costs.
    max_cost: int = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        # Read on every accept and close: worked out once.
        object.__setattr__(self, "fd_budget", max(0, self.nofile - self.reserve_fds))
        object.__setattr__(self, "max_cost", max(self.fd_costs.values()))

    def describe(self) -> str:
        """One line for the log."""
        line = "max_connections %d (open-file limit %d, %d reserved), %s" % (
            self.max_connections,
            self.nofile,
            self.reserve_fds,
            ", ".join("%s %d" % (kind, self.caps[kind]) for kind in KINDS),
        )
        most = self.fd_budget // self.max_cost
        if self.max_connections > most:
            line += "; the descriptors allow only %d TLS connections, which is where TLS stops" % (most,)
        return line


def derive_budget(limits: Any, nofile: int, http_proxies: bool = False) -> Budget:
    """
    The limits for ``limits`` (a :class:`kongacme.config.daemon.LimitsConfig`)
    under an open-file limit of ``nofile``; an explicit value overrides each
    default:

    - ``reserve_fds`` = max(64, nofile / 16), at most nofile / 2;
    - ``max_connections`` = (nofile − reserve_fds) / 2: every connection
      may be a TLS one with its upstream;
    - ``tls`` = max_connections, ``http`` = max_connections / 4 (port 80
      cannot crowd out TLS), ``admin`` = 64;

    each at least 1.

    :param http_proxies: port 80 proxies to upstreams (2 descriptors a
        connection).
    """
    reserve = limits.reserve_fds if limits.reserve_fds is not None else default_reserve(nofile)
    derived = max(1, (nofile - reserve) // 2)
    max_connections = limits.max_connections if limits.max_connections is not None else derived
    caps = {
        "tls": limits.tls if limits.tls is not None else max_connections,
        "http": limits.http if limits.http is not None else max(1, max_connections // 4),
        "admin": limits.admin,
    }
    costs = dict(FD_COSTS, http=2 if http_proxies else 1)
    return Budget(nofile, reserve, max_connections, caps, costs)


class _Refused(Protocol):
    """Closes a connection accepted beyond a limit (see :meth:`ListenerLimit.buildProtocol`)."""

    def connectionMade(self) -> None:
        self.transport.abortConnection()


@implementer(IProtocolFactory)
class LimitedFactory:
    """
    Serves ``wrapped``'s protocols on a listener, counting each connection
    from accept to close against ``limit``.
    """

    def __init__(self, limit: "ListenerLimit", wrapped: IProtocolFactory):
        self.limit = limit
        self.wrapped = wrapped

    def logPrefix(self) -> str:
        prefix = getattr(self.wrapped, "logPrefix", None)
        return prefix() if prefix is not None else self.wrapped.__class__.__name__

    def doStart(self) -> None:
        self.wrapped.doStart()

    def doStop(self) -> None:
        self.wrapped.doStop()

    def buildProtocol(self, addr):
        """
        The wrapped factory's protocol, counted until its
        ``connectionLost``; a connection beyond a limit (accepted in the
        same batch as the one that reached it) is closed at once.
        """
        limit = self.limit
        if not limit.acquire():
            return _Refused()
        try:
            protocol = self.wrapped.buildProtocol(addr)
        except BaseException:
            limit.release()
            raise
        if protocol is None:
            limit.release()
            return None
        lost = protocol.connectionLost

        def connectionLost(reason) -> None:
            # An instance attribute, not a wrapping protocol: a wrapper
            # would sit on the data path of every connection and hide the
            # protocol's interfaces (half-close) from the transport.
            try:
                lost(reason)
            finally:
                limit.release()

        protocol.connectionLost = connectionLost
        return protocol


class _Episode:
    """
    One warning line when a limit is reached, one line once it has been
    clear for :data:`SETTLE` seconds.

    :ivar full: the limit is reached now.
    """

    def __init__(self, clock: IReactorTime, reached: Callable[[], None], cleared: Callable[[], None]):
        self._clock = clock
        self._reached = reached
        self._cleared = cleared
        self.full = False
        self.stopped = False
        self._warned = False
        self._settle = None

    def set(self, full: bool) -> None:
        """Record whether the limit is reached now."""
        if full == self.full:
            return
        self.full = full
        if full:
            self.cancel()
            if not self._warned:
                self._warned = True
                self._reached()
        elif self._warned and self._settle is None and not self.stopped:
            self._settle = self._clock.callLater(SETTLE, self._settled)

    def _settled(self) -> None:
        self._settle = None
        if not self.full and self._warned:
            self._warned = False
            self._cleared()

    def cancel(self) -> None:
        """Forget a pending "cleared" line (the limit was reached again)."""
        if self._settle is not None and self._settle.active():
            self._settle.cancel()
        self._settle = None


class ListenerLimit:
    """
    The connections of one listener kind, and its listening ports.

    :ivar kind: ``tls``, ``http`` or ``admin``.
    :ivar in_use: connections open now.
    :ivar refused: connections closed at accept because a limit was
        reached within one accept batch (normally 0: batches are clamped).
    :ivar paused: not accepting (the ports stopped reading).
    """

    log = Logger()

    def __init__(self, limiter: "ConnectionLimiter", kind: str, clock: IReactorTime):
        self._limiter = limiter
        self.kind = kind
        self.in_use = 0
        self.refused = 0
        self.paused = False
        self.ports: list[IListeningPort] = []
        self.episode = _Episode(clock, self._reached, self._cleared)

    def _reached(self) -> None:
        self.log.warn(
            "{kind} listener at its limit of {cap} connections (limits.{kind}): "
            "new connections wait in the kernel backlog",
            kind=self.kind, cap=self.cap,
        )

    def _cleared(self) -> None:
        self.log.info(
            "{kind} listener below its limit again ({in_use} of {cap} connections): accepting",
            kind=self.kind, in_use=self.in_use, cap=self.cap,
        )

    @property
    def cap(self) -> int:
        """Connections this listener may have open."""
        return self._limiter.budget.caps[self.kind]

    @property
    def cost(self) -> int:
        """Descriptors one of its connections costs."""
        return self._limiter.budget.fd_costs[self.kind]

    def wrap(self, factory: IProtocolFactory) -> LimitedFactory:
        """A factory counting ``factory``'s connections against this limit."""
        return LimitedFactory(self, factory)

    def track(self, port: IListeningPort) -> None:
        """``port`` listens for this kind: paused with the others, batches clamped."""
        self.ports.append(port)
        if self.paused:
            _set_reading(port, False)
        self._limiter.clamp()

    def untrack(self, port: IListeningPort) -> None:
        """``port`` stops listening."""
        if port in self.ports:
            self.ports.remove(port)

    def remaining(self) -> int:
        """Connections this listener may still accept now."""
        limiter = self._limiter
        budget = limiter.budget
        return min(
            self.cap - self.in_use,
            budget.max_connections - limiter.total,
            (budget.fd_budget - limiter.fds) // self.cost,
        )

    def acquire(self) -> bool:
        """Count a new connection, if every limit allows it."""
        if not self._take():
            self.refused += 1
            self._limiter.update()
            return False
        self._limiter.accepted()
        return True

    def take(self) -> bool:
        """
        Count a new connection if every limit allows it, else ``False``
        with nothing counted or refused (the lean engine's accept loop
        asks before it accepts: a connection it cannot take stays in the
        kernel's backlog). Its own accept batches are bounded by this, so
        the ports' batches are clamped only when the room left is near
        the largest of them.
        """
        if not self._take():
            return False
        limiter = self._limiter
        if self.remaining() <= limiter.largest_batch:
            limiter.accepted()
        return True

    def _take(self) -> bool:
        # Called on every accept: the same conditions as remaining() > 0,
        # and update() (which walks every listener) only when a limit may
        # now be reached or one is reached already.
        limiter = self._limiter
        budget = limiter.budget
        cost = budget.fd_costs[self.kind]
        cap = budget.caps[self.kind]
        if self.in_use >= cap or limiter.total >= budget.max_connections or limiter.fds + cost > budget.fd_budget:
            return False
        self.in_use += 1
        limiter.total += 1
        limiter.fds += cost
        if (
            not limiter.quiet
            or self.in_use >= cap
            or limiter.total >= budget.max_connections
            or limiter.fds + budget.max_cost > budget.fd_budget
        ):
            limiter.update()
        return True

    def release(self) -> None:
        """A counted connection closed."""
        limiter = self._limiter
        self.in_use -= 1
        limiter.total -= 1
        limiter.fds -= limiter.budget.fd_costs[self.kind]
        if not limiter.quiet:
            # Below every limit nothing is paused: closing changes nothing.
            limiter.update()

    def update(self, global_full: bool) -> None:
        """Pause or resume the ports as the counts require."""
        self.episode.set(self.in_use >= self.cap)
        paused = self.episode.full or global_full
        if paused != self.paused:
            self.paused = paused
            for port in self.ports:
                _set_reading(port, not paused)


def _set_reading(port: IListeningPort, reading: bool) -> None:
    # stopReading/startReading are FileDescriptor's public methods, which
    # every reactor-made listening port has (tcp, tcp6, unix, ssl and
    # systemd-adopted ports are tcp.Port or a subclass).
    method = getattr(port, "startReading" if reading else "stopReading", None)
    if method is not None and not getattr(port, "disconnecting", False):
        method()


class ConnectionLimiter:
    """
    Every listener's connection count against one :class:`Budget`.

    :param clock: for the settle delay and the accept-batch clamp.
    :param budget: the limits; :meth:`reconfigure` replaces them.
    """

    log = Logger()

    def __init__(self, clock: IReactorTime, budget: Budget):
        self._clock = clock
        self.budget = budget
        self.total = 0
        self.fds = 0
        self._clamp_call = None
        self.episode = _Episode(clock, self._reached, self._cleared)
        self.listeners = {kind: ListenerLimit(self, kind, clock) for kind in KINDS}
        #: No limit is reached (nothing paused): a close changes nothing.
        self.quiet = True
        #: The largest accept batch of a tracked port, as :meth:`clamp` last saw.
        self.largest_batch = 0

    def _reached(self) -> None:
        self.log.warn(
            "connection limit reached: {total} connections using {fds} of {fd_budget} descriptors "
            "(limits.max_connections {max_connections}); new connections wait in the kernel backlog",
            total=self.total, fds=self.fds, fd_budget=self.budget.fd_budget,
            max_connections=self.budget.max_connections,
        )

    def _cleared(self) -> None:
        self.log.info(
            "connections below the limit again ({total} of {max_connections}): accepting",
            total=self.total, max_connections=self.budget.max_connections,
        )

    def listener(self, kind: str) -> ListenerLimit:
        """The limit of listener ``kind``."""
        return self.listeners[kind]

    def reconfigure(self, budget: Budget) -> None:
        """Apply new limits (reload); listeners pause or resume to match."""
        if budget == self.budget:
            return
        self.budget = budget
        self.log.info("connection limits: {limits}", limits=budget.describe())
        self.update()
        self.clamp()

    def update(self) -> None:
        """Pause or resume listeners, and log, as the counts now require."""
        budget = self.budget
        self.episode.set(
            self.total >= budget.max_connections or self.fds + budget.max_cost > budget.fd_budget
        )
        quiet = not self.episode.full
        for limit in self.listeners.values():
            limit.update(self.episode.full)
            quiet = quiet and not limit.episode.full
        self.quiet = quiet

    def accepted(self) -> None:
        """
        A connection was accepted: after this accept batch, clamp the next
        batch of each port to what its listener may still accept.
        Twisted's accept loop takes up to ``numberAccepts`` connections
        per wake-up (growing under load) without looking back at the
        listener, so a batch would overshoot a cap.
        """
        if self._clamp_call is None and not self.episode.stopped:
            self._clamp_call = self._clock.callLater(0, self.clamp)

    def clamp(self) -> None:
        """Limit each port's next accept batch to its listener's room."""
        if self._clamp_call is not None and self._clamp_call.active():
            self._clamp_call.cancel()
        self._clamp_call = None
        largest = 0
        for limit in self.listeners.values():
            room = max(1, limit.remaining())
            for port in limit.ports:
                batch = getattr(port, "numberAccepts", None)
                if isinstance(batch, int):
                    # Twisted grows a batch after a full one; this sees the
                    # growth at the clamp after that batch's accepts.
                    largest = max(largest, batch)
                    if batch > room:
                        port.numberAccepts = room
        self.largest_batch = largest

    def stop(self) -> None:
        """
        Cancel pending timers and start no more (service stop): connections
        closing afterwards are still counted, without log lines.
        """
        if self._clamp_call is not None and self._clamp_call.active():
            self._clamp_call.cancel()
        self._clamp_call = None
        for episode in [self.episode] + [limit.episode for limit in self.listeners.values()]:
            episode.stopped = True
            episode.cancel()

    def snapshot(self) -> Iterator[tuple[str, int, int, bool, int]]:
        """``(kind, in use, cap, paused, refused)`` per listener, for the metrics."""
        for kind in KINDS:
            limit = self.listeners[kind]
            yield kind, limit.in_use, limit.cap, limit.paused, limit.refused
