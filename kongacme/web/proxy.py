"""
Plain-HTTP reverse proxying of a port-80 request to a route's upstream.

Built on :class:`twisted.web.client.Agent` rather than
:mod:`twisted.web.proxy`, which imports the global reactor at import time and
does not decode chunked upstream responses. The response is streamed back
with back-pressure (the upstream body is paused while the client is slow) and
the upstream request is cancelled when the client goes away.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IConsumer, IReactorTCP, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer, IResponse
from twisted.web.server import Request
from zope.interface import implementer

from kongacme.net import canonical_ip

_log = Logger()

#: Headers that describe one connection, not the message (RFC 9110 §7.6.1),
#: plus those Agent computes itself.
_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
_RECOMPUTED = frozenset({b"host", b"content-length"})
#: Set by us; values a client sent are not trusted.
_FORWARDED = frozenset({b"x-forwarded-proto", b"x-forwarded-host", b"x-forwarded-port", b"x-real-ip"})


@attrs.define
class UpstreamForwarder:
    """
    Sends requests to upstreams over plain HTTP/1.1, one connection per
    request.

    :ivar _reactor: provides :class:`~twisted.internet.interfaces.IReactorTCP`
        and :class:`~twisted.internet.interfaces.IReactorTime`.
    :ivar _connect_timeout: seconds allowed to connect to an upstream.
    """

    _reactor: Any = attrs.field(validator=lambda _, __, value: _check_reactor(value))
    _connect_timeout: float = 10.0
    _agent: Agent = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        pool = HTTPConnectionPool(self._reactor, persistent=False)
        self._agent = Agent(self._reactor, connectTimeout=self._connect_timeout, pool=pool)

    def forward(self, request: Request, host: str, port: int, host_header: bytes) -> None:
        """
        Forward ``request`` to ``http://host:port`` with the same method,
        path, query, headers (hop-by-hop ones dropped, ``X-Forwarded-*``
        added) and body, and relay the response; a failure to reach the
        upstream answers 502.

        :param request: the incoming request, fully received; the caller
            returns ``NOT_DONE_YET`` from ``render``.
        :param host: upstream host name or IP address.
        :param port: upstream port.
        :param host_header: ``Host`` to send upstream.
        """
        authority = f"[{host}]" if ":" in host else host
        url = b"http://%s:%d%s" % (authority.encode("ascii"), port, request.uri)
        headers = _upstream_headers(request, host_header)
        request.content.seek(0, 0)
        body = request.content.read()
        producer = None
        framed = any(request.requestHeaders.hasHeader(h) for h in (b"content-length", b"transfer-encoding"))
        if body or framed:
            producer = _BytesProducer(body)
        relay = _Relay(request, f"{authority}:{port}")
        relay.start(self._agent.request(request.method, url, headers, producer))


def _check_reactor(reactor: object) -> None:
    for interface in (IReactorTCP, IReactorTime):
        if not interface.providedBy(reactor):
            raise TypeError(f"reactor must provide {interface.__name__}, not {reactor!r}")


def _connection_tokens(headers: Headers) -> set[bytes]:
    tokens = set()
    for value in headers.getRawHeaders(b"connection", []):
        tokens.update(t.strip().lower() for t in value.split(b","))
    return tokens


def _upstream_headers(request: Request, host_header: bytes) -> Headers:
    incoming = request.requestHeaders
    skip = _HOP_BY_HOP | _RECOMPUTED | _FORWARDED | _connection_tokens(incoming)
    headers = Headers()
    for name, values in incoming.getAllRawHeaders():
        if name.lower() not in skip:
            headers.setRawHeaders(name, list(values))
    client_ip = canonical_ip(getattr(request.getClientAddress(), "host", "unknown")).encode("ascii", "replace")
    forwarded_for = b", ".join(incoming.getRawHeaders(b"x-forwarded-for", []) + [client_ip])
    headers.setRawHeaders(b"x-forwarded-for", [forwarded_for])
    headers.setRawHeaders(b"x-real-ip", [client_ip])
    headers.setRawHeaders(b"x-forwarded-proto", [b"http"])
    original_host = incoming.getRawHeaders(b"host", [b""])[0]
    if original_host:
        headers.setRawHeaders(b"x-forwarded-host", [original_host])
    local_port = getattr(request.getHost(), "port", None)
    if local_port is not None:
        headers.setRawHeaders(b"x-forwarded-port", [b"%d" % (local_port,)])
    headers.setRawHeaders(b"host", [host_header])
    return headers


@implementer(IBodyProducer)
class _BytesProducer:
    """
    The already-received request body, written in one go.
    """

    def __init__(self, body: bytes):
        self._body = body
        self.length = len(body)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        consumer.write(self._body)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class _Relay(Protocol):
    """
    Copies one upstream response to the client's request, and tears the
    upstream side down if the client disconnects first.
    """

    def __init__(self, request: Request, upstream: str):
        self._request = request
        self._upstream = upstream
        self._pending: Deferred[IResponse] | None = None
        self._client_gone = False

    def start(self, response: Deferred[IResponse]) -> None:
        self._pending = response
        response.addCallbacks(self._got_response, self._failed)
        self._request.notifyFinish().addErrback(self._client_lost)

    def _client_lost(self, failure: Failure) -> None:
        self._client_gone = True
        if self._pending is not None:
            self._pending.cancel()
        elif self.transport is not None:
            self.transport.stopProducing()

    def _failed(self, failure: Failure) -> None:
        self._pending = None
        if self._client_gone and failure.check(CancelledError):
            return
        _log.warn(
            "upstream {upstream} failed for {method} {path}: {error}",
            upstream=self._upstream,
            method=self._request.method.decode("ascii", "replace"),
            path=self._request.path[:200].decode("ascii", "backslashreplace"),
            error=failure.getErrorMessage(),
        )
        if self._client_gone:
            return
        body = b"Bad Gateway\n"
        self._request.setResponseCode(502)
        self._request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        self._request.setHeader(b"content-length", b"%d" % (len(body),))
        self._request.write(body)
        self._request.finish()

    def _got_response(self, response: IResponse) -> None:
        self._pending = None
        if not self._client_gone:
            request = self._request
            request.setResponseCode(response.code, response.phrase)
            skip = _HOP_BY_HOP | _connection_tokens(response.headers)
            for name, values in response.headers.getAllRawHeaders():
                if name.lower() not in skip:
                    request.responseHeaders.setRawHeaders(name, list(values))
        response.deliverBody(self)

    def connectionMade(self) -> None:
        if self._client_gone:
            self.transport.stopProducing()
        else:
            self._request.registerProducer(self.transport, True)

    def dataReceived(self, data: bytes) -> None:
        if not self._client_gone:
            self._request.write(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self._client_gone:
            return
        self._request.unregisterProducer()
        if reason is None or reason.check(ResponseDone, PotentialDataLoss):
            self._request.finish()
            return
        # Finishing would tell the client a truncated body is complete.
        _log.warn(
            "upstream {upstream} response body failed: {error}",
            upstream=self._upstream,
            error=reason.getErrorMessage(),
        )
        self._request.loseConnection()
