"""
A set of listening endpoints for one factory, kept in step with the
configuration: reload adds and removes listeners without touching
connections already accepted.

Changing listeners is two-phase, so a reload never ends with fewer
listeners than it started with: :meth:`ListenerSet.prepare` opens the new
endpoints beside the old ones; then :meth:`ListenerSet.commit` closes the
endpoints no longer wanted, or :meth:`ListenerSet.abort` closes the ones
just opened. :func:`update_listeners` does both for several sets at once.
"""

from __future__ import annotations

from typing import Iterable, Sequence

from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks, maybeDeferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure

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


class ListenerSet:
    """
    The listening ports of one kind (tls, http or admin).

    :param reactor: used to parse endpoint strings.
    :param kind: name used in logs.
    :param factory: the protocol factory every listener serves.
    :param limit: counts the connections and pauses the ports at the
        listener's cap (:mod:`kongacme.connlimit`); ``None``: unlimited.
    """

    log = Logger()

    def __init__(self, reactor, kind: str, factory, limit: ListenerLimit | None = None):
        self._reactor = reactor
        self.kind = kind
        self.factory = factory
        self._limit = limit
        self._serving = limit.wrap(factory) if limit is not None else factory
        self._ports: dict[str, IListeningPort] = {}
        self._opened: dict[str, IListeningPort] = {}
        self._wanted: list[str] | None = None

    @property
    def descriptions(self) -> list[str]:
        """Endpoint strings currently listening."""
        return list(self._ports)

    def ports(self) -> list[IListeningPort]:
        """The listening ports, in no particular order."""
        return list(self._ports.values())

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
        return DeferredList([self._stop(d) for d in list(self._ports) if d not in wanted], consumeErrors=True)

    def abort(self) -> Deferred:
        """Close the listeners :meth:`prepare` opened; the set stays as it was."""
        self._wanted = None
        opened, self._opened = self._opened, {}
        return DeferredList([self._close(d, port) for d, port in opened.items()], consumeErrors=True)

    def update(self, descriptions: Iterable[str]) -> Deferred:
        """
        :meth:`prepare`, then :meth:`commit` if every endpoint opened, else
        :meth:`abort`.

        :return: ``Deferred`` firing with the list of :class:`ListenError`.
        """
        return update_listeners([(self, descriptions)])

    def _start(self, description: str) -> Deferred:
        try:
            endpoint = serverFromString(self._reactor, description)
        except Exception as e:
            return succeed(ListenError(self.kind, description, str(e)))

        def listening(port: IListeningPort):
            self._opened[description] = port
            if self._limit is not None:
                self._limit.track(port)
            self.log.info("{kind} listener on {description}", kind=self.kind, description=description)
            return None

        def failed(f: Failure):
            return ListenError(self.kind, description, f.getErrorMessage())

        return maybeDeferred(endpoint.listen, self._serving).addCallbacks(listening, failed)

    def _stop(self, description: str) -> Deferred:
        port = self._ports.pop(description)
        self.log.info("{kind} listener on {description} closed", kind=self.kind, description=description)
        return self._close(description, port)

    def _close(self, description: str, port: IListeningPort) -> Deferred:
        if self._limit is not None:
            self._limit.untrack(port)
        return maybeDeferred(port.stopListening).addCallback(lambda _: None)

    def stop_all(self) -> Deferred:
        """Stop every listener."""
        return DeferredList([self._stop(d) for d in list(self._ports)], consumeErrors=True)


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
