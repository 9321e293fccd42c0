"""
An HTTP/1.1 channel for a port that strangers can reach (the plain-HTTP
port, the Admin API): size limits on the request line, the header block and
the body, a check of the request head before any body is read, and an
absolute deadline for receiving each request.

Twisted's own idle timeout (``HTTPChannel.timeOut``) is reset by every byte,
so a client trickling one byte a second keeps a connection forever; the
deadline here is armed when the connection opens and again when a response is
finished, and only receiving a complete request disarms it. An idle
keep-alive connection therefore also goes after ``request_timeout``.

Twisted reads a request body completely (into a temporary file when it is
large or chunked) before a resource sees the request; here the site is asked
about the head first (:meth:`LimitedSite.check_head`: e.g. a missing token),
and a declared ``Content-Length`` over the site's limit is refused, before a
byte of body is read or a file created. A chunked body is counted as it
arrives and cut at the limit.

The channel reads its limits from ``self.site``, a :class:`LimitedSite`
whose ``settings`` have ``max_header_bytes``, ``max_request_line_bytes`` and
``request_timeout`` (read once per connection).
"""

from __future__ import annotations

import io
import re
from typing import Any, Optional

import attrs
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.web import server
from twisted.web.http import RESPONSES, HTTPChannel

from kongacme.net import peer_name

_log = Logger()
_PRINTABLE = re.compile(rb"[\x20-\x7e]*")

#: Bodies allowed up to this size are kept in memory, not in a temporary
#: file (Twisted's own threshold is 100,000 bytes of declared length).
IN_MEMORY_BODY = 1024 * 1024

#: After refusing a request whose body may still be on its way, the channel
#: half-closes (its answer, then FIN) and reads and drops what the client
#: still sends, for at most LINGER_SECONDS or LINGER_BYTES, before it closes.
#: Closing a socket with unread bytes makes the kernel answer with a reset
#: that can destroy the refusal before the client reads it (nginx's
#: ``lingering_close`` exists for the same reason).
LINGER_SECONDS = 2.0
LINGER_BYTES = 1024 * 1024


def positive(instance: object, attribute: attrs.Attribute, value: Any) -> None:
    """
    An attrs validator for the settings' limits: a number above 0 (not a
    bool).

    :raises ValueError: for anything else.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{attribute.name} must be a positive number, not {value!r}")


@attrs.frozen
class Refusal:
    """
    A response given instead of serving a request, after which the
    connection is closed.

    :ivar code: the HTTP status.
    :ivar why: a short reason for the log line.
    :ivar headers: more ``(name, value)`` header pairs (bytes), e.g. a
        ``Content-Type`` for the body.
    :ivar body: the body (left out for ``HEAD``).
    """

    code: int
    why: str
    headers: tuple[tuple[bytes, bytes], ...] = ()
    body: bytes = b""


class LimitedRequest(server.Request):
    """
    A :class:`twisted.web.server.Request` that refuses a body larger than
    the limit the channel gave it (chunked bodies have no length up front,
    so they are counted as they arrive), and keeps a body allowed to be at
    most :data:`IN_MEMORY_BODY` bytes in memory.

    :ivar body_limit: bytes of body allowed, set by the channel after the
        headers.
    """

    body_limit: Optional[int] = None
    _body_received = 0

    def gotLength(self, length: Optional[int]) -> None:
        """
        Make the file the body goes to: in memory when the limit is small.
        """
        if self.body_limit is not None and self.body_limit <= IN_MEMORY_BODY:
            self.content = io.BytesIO()
        else:
            super().gotLength(length)

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
            channel.reject(413, "request body too large (at most %d bytes)" % (self.body_limit,),
                           limit=self.body_limit)
            return
        super().handleContentChunk(data)


class LimitedHTTPChannel(HTTPChannel):
    """
    :class:`twisted.web.http.HTTPChannel` with the limits described in this
    module. A refused request gets a short response with
    ``Connection: close`` (its body from :meth:`LimitedSite.refusal`) and
    the connection is closed; one log line says why.

    The channel follows the request line and header sizes itself (Twisted
    keeps them in private members).

    :ivar rejected: ``True`` once a request has been refused; everything the
        client sends after that is ignored.
    """

    rejected = False
    _deadline: Optional[IDelayedCall] = None
    _abort: Optional[IDelayedCall] = None
    _lingered = 0
    _bytes_since_response = 0
    _request_timeout: float = 30.0
    _max_request_line = 8192
    #: The request line of the request being received (``None`` while it
    #: is awaited), and the bytes of its head so far.
    _request_line: Optional[bytes] = None
    _head_bytes = 0
    #: Between a whole request received and its response finished.
    _serving = False

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
            self._lingered += len(data)
            if self._lingered > LINGER_BYTES and self.transport is not None:
                self.transport.abortConnection()
            return
        self._bytes_since_response += len(data)
        super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        if self.rejected:
            return
        if self._request_line is None:
            if not line:
                # A stray empty line before a request: Twisted eats one
                # (and answers 400 to a second).
                super().lineReceived(line)
                return
            if len(line) > self._max_request_line:
                self.reject(414, "request line too long", limit=self._max_request_line)
                return
            self._request_line = line
            self._head_bytes = 0
        self._head_bytes += len(line)
        if self._head_bytes > self.totalHeadersSize:
            self.reject(431, "request headers too large", limit=self.totalHeadersSize)
            return
        super().lineReceived(line)

    def lineLengthExceeded(self, line: bytes) -> None:
        if self._request_line is None:
            if not _PRINTABLE.fullmatch(line[:64]):
                self.reject(400, "not an HTTP request")
            else:
                self.reject(414, "request line too long", limit=self._max_request_line)
        else:
            self.reject(431, "request headers too large", limit=self.totalHeadersSize)

    def _method_and_path(self) -> tuple[bytes, bytes]:
        # Twisted has already refused a request line without three parts.
        parts = (self._request_line or b"").split(b" ")
        method = parts[0]
        path = parts[1].split(b"?", 1)[0] if len(parts) > 1 else b""
        return method, path

    def allHeadersReceived(self) -> None:
        if self.rejected:
            return
        request = self.requests[-1]
        method, path = self._method_and_path()
        refusal = self.site.check_head(request, method, path)
        if refusal is not None:
            self.refuse(refusal)
            return
        limit = self.site.body_limit(path)
        if self.length is not None and self.length > limit:
            self.reject(413, "request body too large (at most %d bytes)" % (limit,), limit=limit)
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
        self._request_line = None
        self._serving = True
        super().allContentReceived()

    def requestDone(self, request: Any) -> None:
        self._bytes_since_response = 0
        self._serving = False
        if self.persistent:
            # Armed before the parent replays pipelined data, which may
            # complete (and so disarm for) the next request at once.
            self._arm_deadline()
        super().requestDone(request)

    def connectionLost(self, reason: Any) -> None:
        self._cancel_deadline()
        if self._abort is not None and self._abort.active():
            self._abort.cancel()
        super().connectionLost(reason)

    def _respondToBadRequestAndDisconnect(self) -> None:
        # Twisted's own malformed-request path (bad request line, header
        # syntax, Content-Length, chunk framing): the one private hook
        # overridden, so that it gets the same answer and log line.
        self.reject(400, "malformed request")

    def reject(self, code: int, why: str, **fields: Any) -> None:
        """
        Refuse the request being received: answer ``code`` (the body the
        site gives for it) with ``Connection: close``, log one line, and
        close the connection.

        :param code: one of 400, 408, 413, 414, 431.
        :param why: a short reason, for the log line and the site's body.
        :param fields: extra structured log fields (e.g. ``limit``).
        """
        self.refuse(self.site.refusal(code, why), **fields)

    def refuse(self, refusal: Refusal, **fields: Any) -> None:
        """
        Answer ``refusal`` instead of the request being received, log one
        line, and close the connection.

        :param fields: extra structured log fields.
        """
        if self.rejected:
            return
        self.rejected = True
        self._cancel_deadline()
        _log.warn(
            "refused HTTP request from {peer}: {status} ({why})",
            peer=peer_name(self.transport),
            status=refusal.code,
            why=refusal.why,
            **fields,
        )
        method = self._method_and_path()[0] if self._request_line is not None else b""
        body = b"" if method == b"HEAD" else refusal.body
        head = [b"HTTP/1.1 %d %s" % (refusal.code, RESPONSES.get(refusal.code, b"Error")),
                b"Connection: close", b"Content-Length: %d" % (len(refusal.body),)]
        head.extend(name + b": " + value for name, value in refusal.headers)
        self.transport.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
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
        if self._serving or self.rejected:
            return
        if self._bytes_since_response:
            self.reject(408, "request not received in time", timeout=self._request_timeout)
        else:
            _log.debug("closing idle HTTP connection from {peer}", peer=peer_name(self.transport))
            self.rejected = True
            self._close()

    def _close(self) -> None:
        # As HTTPChannel.timeoutConnection does: a client that never reads
        # must not keep the socket half-closed, so abort after abortTimeout.
        self.setTimeout(None)
        half_close = getattr(self.transport, "loseWriteConnection", None)
        if self.rejected and half_close is not None:
            # A lingering close (LINGER_SECONDS): the answer and a FIN go
            # out, what the client still sends is read and dropped, and the
            # client's own FIN (or the timer) ends the connection.
            if self._abort is None:
                self._abort = self.callLater(LINGER_SECONDS, self.transport.abortConnection)
            # Reading may have been paused by the request being dispatched.
            self.transport.resumeProducing()
            half_close()
            return
        if self.abortTimeout is not None and self._abort is None:
            self._abort = self.callLater(self.abortTimeout, self.transport.abortConnection)
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


class LimitedSite(QuietSite):
    """
    A :class:`QuietSite` whose connections are :class:`LimitedHTTPChannel`
    and requests :class:`LimitedRequest`; subclasses set ``settings`` (see
    the module docstring) and may override the three questions the channel
    asks.
    """

    protocol = LimitedHTTPChannel  # type: ignore[assignment]
    requestFactory = LimitedRequest  # type: ignore[assignment]

    def check_head(self, request: server.Request, method: bytes, path: bytes) -> Optional[Refusal]:
        """
        Asked once a request's headers are in (``request.requestHeaders``),
        before any of its body is read: a :class:`Refusal` to answer at
        once, or ``None`` to go on. Default: ``None``.

        :param method: the request method.
        :param path: the request path without the query.
        """
        return None

    def body_limit(self, path: bytes) -> int:
        """
        The largest request body accepted for a request to ``path``.
        Default: 64 KiB.
        """
        return 64 * 1024

    def refusal(self, code: int, why: str) -> Refusal:
        """
        The response for a request the channel refuses (400, 408, 413,
        414, 431). Default: an empty body.
        """
        return Refusal(code, why)
