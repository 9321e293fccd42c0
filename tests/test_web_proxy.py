"""
Tests for kongacme.web.proxy (forwarding itself is also covered by the
proxy-mode tests in tests.test_web_challenge).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from kongacme.web._channel import QuietSite
from kongacme.web.proxy import UpstreamForwarder
from tests.test_web_support import FakeRoute, FakeRouter, ServerMixin, connect, parse_response


class Hang(Resource):
    """
    An upstream that never finishes its response, optionally after sending
    part of the body.

    :ivar rendered: fires with the upstream request once it arrives.
    """

    isLeaf = True

    def __init__(self, partial: bytes = b""):
        super().__init__()
        self.partial = partial
        self.rendered: Deferred[Any] = Deferred()

    def render(self, request: Any) -> Any:
        if self.partial:
            request.write(self.partial)
        self.rendered.callback(request)
        return NOT_DONE_YET


class ClientGoneTests(ServerMixin, TestCase):
    """
    Tests for UpstreamForwarder when the client disconnects first.
    """

    timeout = 10

    @inlineCallbacks
    def check_upstream_released(self, partial: bytes) -> Any:
        upstream = Hang(partial)
        upstream_port = self.listen(QuietSite(upstream, reactor=reactor))
        self.router = FakeRouter({"app.example": FakeRoute("127.0.0.1", upstream_port)})
        _, port = self.start(mode="proxy")
        client = yield connect(port)
        client.transport.write(b"GET /slow HTTP/1.1\r\nHost: app.example\r\n\r\n")
        upstream_request = yield upstream.rendered
        upstream_done = upstream_request.notifyFinish()
        while partial not in client.received:
            yield deferLater(reactor, 0.01, lambda: None)
        client.transport.abortConnection()
        yield client.closed
        # The upstream sees its connection go: the proxy gave up on it.
        yield self.assertFailure(upstream_done, Exception)
        return client

    def test_before_response(self) -> Any:
        """
        A client that disconnects while the upstream has not answered yet
        makes the proxy cancel the upstream request.
        """
        return self.check_upstream_released(b"")

    @inlineCallbacks
    def test_during_body(self) -> Any:
        """
        A client that disconnects while the body is streaming makes the
        proxy stop reading the upstream response and close it.
        """
        client = yield self.check_upstream_released(b"first part of a long body")
        self.assertEqual(parse_response(client.received).status, 200)


class UpstreamForwarderTests(SynchronousTestCase):
    """
    Tests for UpstreamForwarder's construction.
    """

    def test_reactor_checked(self) -> None:
        """
        A reactor without IReactorTCP is refused with TypeError.
        """
        self.assertRaises(TypeError, UpstreamForwarder, Clock())
