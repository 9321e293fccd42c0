"""
Tests for kongacme.response_body, over real HTTP connections.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred, inlineCallbacks
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool, ResponseFailed

from kongacme.errors import ResponseTooLarge
from kongacme.response_body import read_body
from tests.test_web_support import settle


class _Script(Protocol):
    """Answers the first request with ``script``; closes after it if ``close``; records its end."""

    def __init__(self, script: bytes, close: bool, lost: list[Deferred[None]]):
        self.script = script
        self.close = close
        self.lost: Deferred[None] = Deferred()
        lost.append(self.lost)

    def dataReceived(self, data: bytes) -> None:
        if self.script:
            self.transport.write(self.script)  # type: ignore[union-attr]
            self.script = b""
            if self.close:
                self.transport.loseConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Any = None) -> None:
        self.lost.callback(None)


class ReadBodyTests(TestCase):
    """
    Tests for read_body.
    """

    def setUp(self) -> None:
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.agent = Agent(reactor, pool=self.pool)
        self.addCleanup(self.pool.closeCachedConnections)

    def serve(self, script: bytes, close: bool = False) -> tuple[bytes, list[Deferred[None]]]:
        lost: list[Deferred[None]] = []
        port = reactor.listenTCP(0, Factory.forProtocol(lambda: _Script(script, close, lost)), interface="127.0.0.1")
        self.addCleanup(lambda: port.stopListening().addCallback(lambda _: settle()))
        return b"http://127.0.0.1:%d/" % (port.getHost().port,), lost

    @inlineCallbacks
    def test_whole_body(self) -> Any:
        """
        The body arrives whole, with a length or delimited by the close.
        """
        url, _ = self.serve(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello world")
        response = yield self.agent.request(b"GET", url)
        self.assertEqual((yield read_body(response)), b"hello world")
        url, _ = self.serve(b"HTTP/1.0 200 OK\r\n\r\nuntil the end", close=True)
        response = yield self.agent.request(b"GET", url)
        self.assertEqual((yield read_body(response, limit=100)), b"until the end")

    @inlineCallbacks
    def test_too_large(self) -> Any:
        """
        A body past the limit fails with ResponseTooLarge and the connection
        is closed, though the server keeps it open.
        """
        url, lost = self.serve(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 1000)
        response = yield self.agent.request(b"GET", url)
        with self.assertRaises(ResponseTooLarge) as caught:
            yield read_body(response, limit=999)
        self.assertEqual(caught.exception.limit, 999)
        self.assertEqual(str(caught.exception), "answer larger than 999 bytes")
        yield lost[0]

    @inlineCallbacks
    def test_cut_off(self) -> Any:
        """
        A body cut off before its announced length fails, never a short
        success.
        """
        url, _ = self.serve(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort", close=True)
        response = yield self.agent.request(b"GET", url)
        with self.assertRaises(ResponseFailed):
            yield read_body(response)

    @inlineCallbacks
    def test_cancel_closes(self) -> Any:
        """
        Cancelling the Deferred (a request's deadline) closes the
        connection while the server is still sending nothing more.
        """
        url, lost = self.serve(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npart")
        response = yield self.agent.request(b"GET", url)
        body = read_body(response)
        body.cancel()
        self.failureResultOf(body, CancelledError)
        yield lost[0]
