"""
Reading an HTTP response's whole body, for the clients that talk to the
ACME CA, Vault and Consul: a ``Deferred`` that cancelling closes the
connection (so a request's deadline covers the body too) and an optional
size limit.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.client import PotentialDataLoss, ResponseDone
from twisted.web.iweb import IResponse

from kongacme.errors import ResponseTooLarge


class _BodyReader(Protocol):
    """Collects a body into :attr:`finished`, up to ``limit`` bytes."""

    def __init__(self, limit: Optional[int]):
        self._limit = limit
        self._chunks: list[bytes] = []
        self._size = 0
        self.finished: Optional[Deferred[bytes]] = Deferred(self._cancel)

    def _cancel(self, d: Deferred[bytes]) -> None:
        self.finished = None
        self._stop()

    def _stop(self) -> None:
        # The response's transport is an IPushProducer: stopping it closes
        # the connection.
        transport: Any = self.transport
        if transport is not None:
            transport.stopProducing()

    def dataReceived(self, data: bytes) -> None:
        if self.finished is None:
            return
        self._size += len(data)
        if self._limit is not None and self._size > self._limit:
            d, self.finished = self.finished, None
            self._stop()
            d.errback(ResponseTooLarge(self._limit))
            return
        self._chunks.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.finished is None:
            return
        d, self.finished = self.finished, None
        # PotentialDataLoss: a body delimited by the connection closing
        # (no Content-Length), which is complete as far as anyone can tell.
        if reason.check(ResponseDone, PotentialDataLoss):
            d.callback(b"".join(self._chunks))
        else:
            d.errback(reason)


def read_body(response: IResponse, limit: Optional[int] = None) -> Deferred[bytes]:
    """
    The whole body of ``response``.

    :param limit: the most bytes read; ``None``: no limit.
    :return: ``Deferred`` firing with the body, or failing with
        :class:`~kongacme.errors.ResponseTooLarge` past ``limit`` (the
        connection is then closed) or with the reason the body was cut off.
        Cancelling it closes the connection.
    """
    reader = _BodyReader(limit)
    finished = reader.finished
    assert finished is not None
    response.deliverBody(reader)
    return finished
