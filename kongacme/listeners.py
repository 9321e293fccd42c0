"""
A set of listening endpoints for one factory, kept in step with the
configuration: reload adds and removes listeners without touching
connections already accepted.

Changing listeners is two-phase, so a reload never ends with fewer
listeners than it started with: :meth:`ListenerSet.prepare` opens the new
endpoints beside the old ones; then :meth:`ListenerSet.commit` closes the
endpoints no longer wanted, or :meth:`ListenerSet.abort` closes the ones
just opened. :func:`update_listeners` does both for several sets at once.

A set whose sockets other processes accept on (the master's TLS sockets
with ``workers`` > 1) opens them without accepting (``accepting=False``)
and keeps the ones a reload removed open until told
(``defer_close=True``, :meth:`ListenerSet.close_unlisted`): closing a
listening socket shuts it down for every process holding it, and the
workers of the previous generation may still be accepting on it.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks, maybeDeferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure

from kongacme.config.daemon import parse_endpoint_description
from kongacme.connlimit import ListenerLimit


class ListenError(Exception):
    """
    An endpoint could not be listened on.

    :ivar kind: which listener (tls, http, admin).
    :ivar description: the endpoint string.
    :ivar reason: why.
    """

    def __init__(self, kind: str, description: str, reason: str):
        self.kind = kind
        self.description = description
        self.reason = reason
        super().__init__("cannot listen on %s endpoint %r: %s" % (kind, description, reason))


#: The listen backlog of a ``tcp:``/``tcp6:``/``unix:`` endpoint that does not set
#: ``backlog=`` (Twisted's default is 50: past it the kernel drops SYNs,
#: and a burst of new clients, or those the connection limits leave waiting,
#: each lose a second or more to SYN retries). Linux caps it at
#: ``net.core.somaxconn`` (4096 by default).
DEFAULT_BACKLOG = 1024


def with_default_backlog(description: str) -> str:
    """``description`` with ``backlog=`` :data:`DEFAULT_BACKLOG` if it is a TCP or UNIX endpoint without one."""
    try:
        args, kwargs = parse_endpoint_description(description)
    except Exception:
        return description  # serverFromString says what is wrong
    kind = str(args[0]).lower() if args else ""
    if kind == "haproxy":
        head, _, wrapped = description.partition(":")
        return head + ":" + with_default_backlog(wrapped)
    if kind in ("tcp", "tcp6", "unix") and "backlog" not in kwargs:
        return description + ":backlog=%d" % (DEFAULT_BACKLOG,)
    return description


class ListenerSet:
    """
    The listening ports of one kind (tls, http or admin).

    :param reactor: used to parse endpoint strings.
    :param kind: name used in logs.
    :param factory: the protocol factory every listener serves.
    :param limit: counts the connections and pauses the ports at the
        listener's cap (:mod:`kongacme.connlimit`); ``None``: unlimited.
    :param accepting: ``False``: the ports are opened but never read
        (other processes accept on them).
    :param defer_close: ``True``: a port :meth:`commit` takes out of the
        set stays open, in :attr:`unlisted`, until
        :meth:`close_unlisted` (or :meth:`stop_all`).
    :param engine: a :class:`~kongacme.engine.lean.LeanEngine` that accepts
        on the plain ``tcp:`` ports instead of Twisted (``listen.engine:
        lean``); other endpoint kinds stay Twisted's, which is logged.

    :ivar unlisted: endpoint string → port taken out of the set but not
        closed yet (``defer_close``).
    """

    log = Logger()

    def __init__(
        self,
        reactor,
        kind: str,
        factory,
        limit: ListenerLimit | None = None,
        accepting: bool = True,
        defer_close: bool = False,
        engine: Any = None,
    ):
        self._reactor = reactor
        self.kind = kind
        self.factory = factory
        self._limit = limit
        self._serving = limit.wrap(factory) if limit is not None else factory
        self._accepting = accepting
        self._defer_close = defer_close
        self._ports: dict[str, IListeningPort] = {}
        self._opened: dict[str, IListeningPort] = {}
        self._wanted: list[str] | None = None
        self.unlisted: dict[str, IListeningPort] = {}
        self._revived: set[str] = set()
        self._engine = engine

    @property
    def descriptions(self) -> list[str]:
        """Endpoint strings currently listening."""
        return list(self._ports)

    def ports(self) -> list[IListeningPort]:
        """The listening ports, in no particular order."""
        return list(self._ports.values())

    def items(self) -> list[tuple[str, IListeningPort]]:
        """``(endpoint string, port)`` of every listening port."""
        return list(self._ports.items())

    def prepare(self, descriptions: Iterable[str]) -> Deferred:
        """
        Listen on every description not yet listening, keeping every
        current listener; :meth:`commit` or :meth:`abort` must follow.

        :return: ``Deferred`` firing with a list of :class:`ListenError` for
            the endpoints that could not be opened (empty on success).
        """
        if self._wanted is not None:
            raise RuntimeError("%s listeners: prepare() before the last commit() or abort()" % (self.kind,))
        wanted = list(dict.fromkeys(descriptions))
        self._wanted = wanted
        starts = [self._start(d) for d in wanted if d not in self._ports]

        def collect(results):
            return [value for ok, value in results if ok and value is not None]

        return DeferredList(starts, consumeErrors=True).addCallback(collect)

    def commit(self) -> Deferred:
        """
        The prepared listeners become the set: close the ones no longer
        wanted. Established connections are not affected.
        """
        wanted, self._wanted = self._wanted or [], None
        self._ports.update(self._opened)
        self._opened = {}
        self._revived.clear()
        return DeferredList([self._stop(d) for d in list(self._ports) if d not in wanted], consumeErrors=True)

    def abort(self) -> Deferred:
        """Close the listeners :meth:`prepare` opened; the set stays as it was."""
        self._wanted = None
        opened, self._opened = self._opened, {}
        revived, self._revived = self._revived, set()
        self.unlisted.update((d, port) for d, port in opened.items() if d in revived)
        closing = [self._close(d, port) for d, port in opened.items() if d not in revived]
        return DeferredList(closing, consumeErrors=True)

    def update(self, descriptions: Iterable[str]) -> Deferred:
        """
        :meth:`prepare`, then :meth:`commit` if every endpoint opened, else
        :meth:`abort`.

        :return: ``Deferred`` firing with the list of :class:`ListenError`.
        """
        return update_listeners([(self, descriptions)])

    def _start(self, description: str) -> Deferred:
        if description in self.unlisted:
            # Removed by an earlier reload, not closed yet: listed again as it is.
            self._opened[description] = self.unlisted.pop(description)
            self._revived.add(description)
            return succeed(None)
        try:
            endpoint = serverFromString(self._reactor, with_default_backlog(description))
        except Exception as e:
            return succeed(ListenError(self.kind, description, str(e)))

        def listening(port: IListeningPort):
            port = self._lean(description, port)
            if not self._accepting:
                # Before the reactor runs again: no connection is accepted here.
                port.stopReading()  # type: ignore[attr-defined]
            self._opened[description] = port
            if self._limit is not None:
                self._limit.track(port)
            self.log.info("{kind} listener on {description}", kind=self.kind, description=description)
            return None

        def failed(f: Failure):
            return ListenError(self.kind, description, f.getErrorMessage())

        return maybeDeferred(endpoint.listen, self._serving).addCallbacks(listening, failed)

    def _lean(self, description: str, port: IListeningPort) -> IListeningPort:
        """``port``, accepted on by the lean engine when there is one and it can."""
        if self._engine is None:
            return port
        taken = self._engine.take(description, port, self._serving, self._limit)
        if taken is not None:
            self.log.info("{kind} listener on {description}: lean engine", kind=self.kind, description=description)
            return taken
        self.log.info(
            "{kind} listener on {description}: served by the Twisted engine "
            "(listen.engine: lean applies to tcp:, tcp6: and INET systemd: endpoints only)",
            kind=self.kind, description=description,
        )
        return port

    def _stop(self, description: str, deferrable: bool = True) -> Deferred:
        port = self._ports.pop(description)
        if deferrable and self._defer_close:
            self.unlisted[description] = port
            return succeed(None)
        return self._close(description, port, logged=True)

    def close_unlisted(self, descriptions: Iterable[str]) -> Deferred:
        """Close the ports of ``descriptions`` still in :attr:`unlisted` (those listed again stay)."""
        closing = []
        for description in descriptions:
            port = self.unlisted.pop(description, None)
            if port is not None:
                closing.append(self._close(description, port, logged=True))
        return DeferredList(closing, consumeErrors=True)

    def _close(self, description: str, port: IListeningPort, logged: bool = False) -> Deferred:
        if self._limit is not None:
            self._limit.untrack(port)

        def closed(_: object) -> None:
            # Once the socket is closed (stopListening closes it a turn later).
            if logged:
                self.log.info("{kind} listener on {description} closed", kind=self.kind, description=description)

        return maybeDeferred(port.stopListening).addCallback(closed)

    def stop_all(self) -> Deferred:
        """Stop every listener (and close every unlisted port)."""
        stops = [self._stop(d, deferrable=False) for d in list(self._ports)]
        return DeferredList(stops + [self.close_unlisted(list(self.unlisted))], consumeErrors=True)


@inlineCallbacks
def update_listeners(changes: Sequence[tuple[ListenerSet, Iterable[str]]]):
    """
    Move several listener sets to new endpoint descriptions together:
    every new endpoint is opened first; if any fails, the ones just opened
    are closed and every set keeps its listeners; otherwise the endpoints
    no longer wanted are closed.

    :param changes: ``(listener set, wanted descriptions)`` pairs.
    :return: ``Deferred`` firing with the :class:`ListenError` list (empty:
        applied).
    """
    errors: list[ListenError] = []
    for listener_set, descriptions in changes:
        errors.extend((yield listener_set.prepare(descriptions)))
    if errors:
        for listener_set, _ in changes:
            yield listener_set.abort()
        return errors
    for listener_set, _ in changes:
        yield listener_set.commit()
    return []
