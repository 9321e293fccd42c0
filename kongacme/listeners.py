"""
A set of listening endpoints for one factory, kept in step with the
configuration: reload adds and removes listeners without touching
connections already accepted.
"""

from __future__ import annotations

from typing import Iterable

from twisted.internet.defer import Deferred, DeferredList, maybeDeferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure


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
    """

    log = Logger()

    def __init__(self, reactor, kind: str, factory):
        self._reactor = reactor
        self.kind = kind
        self.factory = factory
        self._ports: dict[str, IListeningPort] = {}

    @property
    def descriptions(self) -> list[str]:
        """Endpoint strings currently listening."""
        return list(self._ports)

    def ports(self) -> list[IListeningPort]:
        """The listening ports, in no particular order."""
        return list(self._ports.values())

    def update(self, descriptions: Iterable[str]) -> Deferred:
        """
        Listen on every description not yet listening; stop listening on
        those no longer wanted. Established connections are not affected.

        :return: ``Deferred`` firing with a list of :class:`ListenError` for
            the endpoints that could not be opened (empty on success).
        """
        wanted = list(dict.fromkeys(descriptions))
        stops = [self._stop(d) for d in list(self._ports) if d not in wanted]
        starts = [self._start(d) for d in wanted if d not in self._ports]

        def collect(results):
            return [value for ok, value in results if ok and value is not None]

        return DeferredList(stops + starts, consumeErrors=True).addCallback(collect)

    def _start(self, description: str) -> Deferred:
        try:
            endpoint = serverFromString(self._reactor, description)
        except Exception as e:
            return succeed(ListenError(self.kind, description, str(e)))

        def listening(port: IListeningPort):
            self._ports[description] = port
            self.log.info("{kind} listener on {description}", kind=self.kind, description=description)
            return None

        def failed(f: Failure):
            error = ListenError(self.kind, description, f.getErrorMessage())
            self.log.error("{error}", error=str(error))
            return error

        return maybeDeferred(endpoint.listen, self.factory).addCallbacks(listening, failed)

    def _stop(self, description: str) -> Deferred:
        port = self._ports.pop(description)
        self.log.info("{kind} listener on {description} closed", kind=self.kind, description=description)
        return maybeDeferred(port.stopListening).addCallback(lambda _: None)

    def stop_all(self) -> Deferred:
        """Stop every listener."""
        return DeferredList([self._stop(d) for d in list(self._ports)], consumeErrors=True)
