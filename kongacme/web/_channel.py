"""
An HTTP/1.1 channel for an Internet-facing plain-HTTP port: size limits on
the request line, the header block and the body, and an absolute deadline for
receiving each request.

Twisted's own idle timeout (``HTTPChannel.timeOut``) is reset by every byte,
so a client trickling one byte a second keeps a connection forever; the
deadline here is armed when the connection opens and again when a response is
finished, and only receiving a complete request disarms it. An idle
keep-alive connection therefore also goes after ``request_timeout``.

The channel reads its limits from ``self.site``, which must have

* ``settings`` with ``max_header_bytes``, ``max_request_line_bytes`` and
  ``request_timeout`` (read once per connection), and
* ``body_limit(path: bytes) -> int``, the body size allowed for a request to
  ``path`` (asked once per request, after its headers).
"""

from __future__ import annotations

import re
from typing import Any

from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.web import server
from twisted.web.http import HTTPChannel

_log = Logger()
_PRINTABLE = re.compile(rb"[\x20-\x7e]*")

_REASONS = {
    400: b"Bad Request",
    408: b"Request Timeout",
    413: b"Content Too Large",
    414: b"URI Too Long",
    431: b"Request Header Fields Too Large",
}


def _peer(transport: Any) -> str:
    try:
        address = transport.getPeer()
        return f"{address.host}:{address.port}"
    except Exception:
        return "unknown"


class LimitedRequest(server.Request):
    """
    A :class:`twisted.web.server.Request` that refuses a body larger than
    the limit the channel gave it (chunked bodies have no length up front,
    so they are counted as they arrive).

    :ivar body_limit: bytes of body allowed, set by the channel after the
        headers.
    """

    body_limit: int | None = None
    _body_received = 0

    def handleContentChunk(self, data: bytes) -> None:
        """
        Store a piece of the body, or reject the request (413) when it grows
        past :attr:`body_limit`.
        """
        channel = self.channel
        if channel is None or getattr(channel, "rejected", False):
            return
        self._body_received += len(data)
        if self.body_limit is not None and self._body_received > self.body_limit:
            channel.reject(413, "request body too large", limit=self.body_limit)
            return
        super().handleContentChunk(data)


class LimitedHTTPChannel(HTTPChannel):
    """
    :class:`twisted.web.http.HTTPChannel` with the limits described in this
    module. A refused request gets a short response with
    ``Connection: close`` and the connection is closed; one log line says
    why.

    :ivar rejected: ``True`` once a request has been refused; everything the
        client sends after that is ignored.
    """

    rejected = False
    _deadline: IDelayedCall | None = None
    _bytes_since_response = 0
    _request_timeout: float = 30.0
    _max_request_line = 8192

    def connectionMade(self) -> None:
        settings = self.site.settings
        self._request_timeout = settings.request_timeout
        self._max_request_line = settings.max_request_line_bytes
        self.MAX_LENGTH = settings.max_header_bytes
        self.totalHeadersSize = settings.max_header_bytes
        # The idle timeout stays on as a second line of defence while a
        # response is being written (the deadline is off then).
        self.timeOut = settings.request_timeout
        super().connectionMade()
        self._arm_deadline()

    def dataReceived(self, data: bytes) -> None:
        if self.rejected:
            return
        self._bytes_since_response += len(data)
        super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        if self.rejected:
            return
        # _receivedHeaderSize is 0 exactly while the request line is awaited.
        if self._receivedHeaderSize == 0 and len(line) > self._max_request_line:
            self.reject(414, "request line too long", limit=self._max_request_line)
            return
        if self._receivedHeaderSize + len(line) > self.totalHeadersSize:
            self.reject(431, "request headers too large", limit=self.totalHeadersSize)
            return
        super().lineReceived(line)

    def lineLengthExceeded(self, line: bytes) -> None:
        if self._receivedHeaderSize == 0:
            if not _PRINTABLE.fullmatch(line[:64]):
                self.reject(400, "not an HTTP request")
            else:
                self.reject(414, "request line too long", limit=self._max_request_line)
        else:
            self.reject(431, "request headers too large", limit=self.totalHeadersSize)

    def allHeadersReceived(self) -> None:
        request = self.requests[-1]
        limit = self.site.body_limit(getattr(self, "_path", b""))
        if self.length is not None and self.length > limit:
            self.reject(413, "request body too large", limit=limit)
            return
        if isinstance(request, LimitedRequest):
            request.body_limit = limit
        super().allHeadersReceived()

    def rawDataReceived(self, data: bytes) -> None:
        if self.rejected:
            return
        super().rawDataReceived(data)

    def allContentReceived(self) -> None:
        if self.rejected:
            return
        self._cancel_deadline()
        super().allContentReceived()

    def requestDone(self, request: Any) -> None:
        self._bytes_since_response = 0
        if self.persistent:
            # Armed before the parent replays pipelined data, which may
            # complete (and so disarm for) the next request at once.
            self._arm_deadline()
        super().requestDone(request)

    def connectionLost(self, reason: Any) -> None:
        self._cancel_deadline()
        super().connectionLost(reason)

    def _respondToBadRequestAndDisconnect(self) -> None:
        # Twisted's own malformed-request path (bad request line, header
        # syntax, Content-Length, chunk framing).
        self.reject(400, "malformed request")

    def reject(self, code: int, why: str, **fields: Any) -> None:
        """
        Refuse the request being received: answer ``code`` with
        ``Connection: close``, log one line, and close the connection.

        :param code: one of 400, 408, 413, 414, 431.
        :param why: a short reason for the log line.
        :param fields: extra structured log fields (e.g. ``limit``).
        """
        if self.rejected:
            return
        self.rejected = True
        self._cancel_deadline()
        _log.warn(
            "refused HTTP request from {peer}: {status} ({why})",
            peer=_peer(self.transport),
            status=code,
            why=why,
            **fields,
        )
        self.transport.write(
            b"HTTP/1.1 %d %s\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
            % (code, _REASONS.get(code, b"Error"))
        )
        self._close()

    def _arm_deadline(self) -> None:
        self._cancel_deadline()
        self._deadline = self.callLater(self._request_timeout, self._deadline_passed)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            if self._deadline.active():
                self._deadline.cancel()
            self._deadline = None

    def _deadline_passed(self) -> None:
        self._deadline = None
        if self._handlingRequest or self.rejected:
            return
        if self._bytes_since_response:
            self.reject(408, "request not received in time", timeout=self._request_timeout)
        else:
            _log.debug("closing idle HTTP connection from {peer}", peer=_peer(self.transport))
            self.rejected = True
            self._close()

    def _close(self) -> None:
        # As HTTPChannel.timeoutConnection does: a client that never reads
        # must not keep the socket half-closed, so abort after abortTimeout.
        self.setTimeout(None)
        if self.abortTimeout is not None and self._abortingCall is None:
            self._abortingCall = self.callLater(self.abortTimeout, self.forceAbortClient)
        self.loseConnection()


class QuietSite(server.Site):
    """
    A :class:`twisted.web.server.Site` that logs requests through
    :class:`twisted.logger.Logger` at debug level instead of writing an
    access log, and does not start the access log's clock.
    """

    def startFactory(self) -> None:
        pass

    def stopFactory(self) -> None:
        pass

    def log(self, request: Any) -> None:  # type: ignore[override]
        _log.debug(
            "{method} {path} -> {code}",
            method=request.method.decode("ascii", "replace"),
            path=request.uri[:200].decode("ascii", "backslashreplace"),
            code=request.code,
        )
