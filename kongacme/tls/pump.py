"""
The TLS record pump: server-side TLS over memory BIOs (a session of
:mod:`kongacme.tls.session`: pyOpenSSL's, or the standard library's for a
busy certificate), with Twisted's public transport and producer interfaces
on both sides.

:class:`TLSPump` sits between a TCP transport and the protocol it wraps
(the proxy). Ciphertext read from TCP goes into the session with
``feed``; plaintext comes out with ``read`` and goes to the wrapped
protocol; the wrapped protocol's writes go in with ``seal``, and the records
OpenSSL makes come out to the TCP transport. No private member of Twisted,
pyOpenSSL or the ``ssl`` module is used, so each can be upgraded freely.

Half-close (RFC 8446 §6.1): a client's close_notify or TCP FIN becomes the
wrapped protocol's ``readConnectionLost``; its ``loseWriteConnection``
sends close_notify and a FIN and goes on reading. Each direction ends on
its own; the connection ends when both have.

Flow control is the TCP transport's own: the wrapped protocol's producer is
registered on it directly (a full TCP write buffer pauses it), and pausing
this transport pauses reading from TCP. Plaintext is never buffered here
after the handshake: OpenSSL turns every ``send`` into records at once
(memory BIOs never block).
"""

from __future__ import annotations

import ssl
from typing import Any

from OpenSSL.SSL import Error, SysCallError
from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    IHandshakeListener,
    IPushProducer,
    ISSLTransport,
    ITCPTransport,
)
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from kongacme.sockwrite import SocketWriter
from kongacme.tls.records import count_records
from kongacme.tls.session import CLOSED, TLS_ERROR, WANT_READ, TLSSession

#: Plaintext read per ``recv``: more than a TLS record's (16 KiB), so one
#: call takes a whole record (OpenSSL returns one record per call).
RECV_SIZE = 1 << 15

#: Records drained per ``bio_read`` when nothing better is known (the
#: handshake flight, close_notify).
DRAIN_SIZE = 1 << 16


def represents_eof(error: Exception) -> bool:
    """
    Whether an OpenSSL error raised while reading is only the peer's TCP
    FIN without close_notify ("unexpected eof"), which a proxy passes on as
    a half-close, as a TCP proxy passes on a FIN.
    """
    if isinstance(error, SysCallError):
        return error.args[:1] == (-1,)
    if isinstance(error, ssl.SSLEOFError):  # the standard library's (kongacme.tls.session)
        return True
    return any("unexpected eof" in str(item).lower() for item in error.args[0:1] if item)


@implementer(IHalfCloseableProtocol, ITCPTransport, ISSLTransport, IPushProducer)
class TLSPump(Protocol):
    """
    Server-side TLS for one TCP connection, and the transport of the
    protocol it wraps.

    A subclass calls :meth:`start_tls` with the TLS session
    (:mod:`kongacme.tls.session`: pyOpenSSL's, or the standard library's
    for a busy certificate) and the ClientHello bytes already read, and may override :meth:`before_tls`,
    :meth:`handshake_finished` and :meth:`tls_failed`.

    :ivar wrappedProtocol: the protocol getting the plaintext.
    :ivar handshake_done: the handshake has completed.
    """

    wrappedProtocol: Any = None
    handshake_done = False
    disconnecting = False
    negotiatedProtocol: bytes | None = None
    TLS = True

    _tls: TLSSession | None = None
    _writer: SocketWriter | None = None
    _pre_handshake: list[bytes] | None = None
    _producer: Any = None
    _read_closed = False
    _write_closed = False
    _close_write_pending = False
    #: The TLS stream is over: close_notify answered, the handshake failed,
    #: or the connection was aborted; nothing more goes through the engine.
    _tls_over = False
    _reason: Failure | None = None
    # Record boundaries of the client's stream (RFC 8446 §5.1: a 5-byte
    # header whose last two bytes are the length): bytes still to come of
    # the record being read, a header cut by a segment boundary, and the
    # records known complete and not read yet (None: unknown). ``recv`` is
    # not called when no record is complete: it could only raise
    # WantReadError, an exception per read event.
    _need = 0
    _header = b""
    _complete: int | None = None

    # -- starting -------------------------------------------------------------

    def start_tls(self, tls: TLSSession, buffered: bytes) -> None:
        """
        Connect the wrapped protocol to this transport, feed ``buffered``
        (the ClientHello) to ``tls`` and run the first handshake step: one
        ``do_handshake`` that reads the whole hello and writes the server's
        flight, rather than one on an empty BIO first.
        """
        self._tls = tls
        self._writer = SocketWriter(self.transport)
        self.wrappedProtocol.makeConnection(self)
        if self._tls_over or not self.connected:
            return
        if buffered:
            self._count_records(buffered)
            tls.feed(buffered)
        self._handshake()

    def handshake_finished(self) -> None:
        """Called once the handshake completes, before the wrapped protocol hears of it."""

    def tls_failed(self, reason: Failure) -> None:
        """Called when the handshake fails (before the TCP connection closes)."""

    # -- ciphertext in ----------------------------------------------------------

    def before_tls(self, data: bytes) -> None:
        """
        Bytes read before :meth:`start_tls` (the ClientHello); ignored
        unless a subclass buffers them. Called from :meth:`dataReceived`, so
        that after the handshake starts a read costs no extra call.
        """

    def dataReceived(self, data: bytes) -> None:
        tls = self._tls
        if tls is None:
            self.before_tls(data)
            return
        if self._tls_over:
            return
        size = len(data)
        if not self._need and not self._header and size > 5 and size == 5 + (data[3] << 8 | data[4]):
            # The common case: the segment is one whole record.
            if self._complete is not None:
                self._complete += 1
        else:
            self._count_records(data)
        tls.feed(data)
        if self.handshake_done:
            self._read_plaintext(tls)
        else:
            self._handshake()

    def _count_records(self, data: bytes) -> None:
        complete, self._need, self._header = count_records(self._need, self._header, data)
        if self._complete is not None:
            self._complete += complete

    def _handshake(self) -> None:
        tls = self._tls
        assert tls is not None
        try:
            tls.do_handshake()
        except WANT_READ:
            self._drain(DRAIN_SIZE)
            return
        except TLS_ERROR:
            self._fail(Failure())
            return
        self.handshake_done = True
        self.negotiatedProtocol = tls.alpn()
        self.handshake_finished()
        # The server's last flight and the TLS 1.3 session tickets.
        self._drain(DRAIN_SIZE)
        wrapped = self.wrappedProtocol
        if IHandshakeListener.providedBy(wrapped):
            wrapped.handshakeCompleted()
        pending, self._pre_handshake = self._pre_handshake, None
        if pending and not self._tls_over:
            for data in pending:
                self.write(data)
        if self._close_write_pending and not self._tls_over:
            self._close_write_pending = False
            self._send_close_notify()
        if self._tls_over or self._read_closed:
            return
        # Application data that came in the same segment as the Finished.
        self._read_plaintext(tls)

    def _read_plaintext(self, tls: TLSSession) -> None:
        deliver = self.wrappedProtocol.dataReceived
        read = tls.read
        while not self._read_closed and self._complete != 0:
            try:
                data = read(RECV_SIZE)
            except WANT_READ:
                # No complete record left: from here on, count them.
                self._complete = 0
                return
            except CLOSED:
                self._peer_closed_write()
                return
            except TLS_ERROR as e:
                if represents_eof(e):
                    self._peer_closed_write()
                else:
                    self._fail(Failure())
                return
            if not data:  # the standard library's close_notify (or FIN)
                self._peer_closed_write()
                return
            if self._complete:
                self._complete -= 1
            deliver(data)
            if self._tls_over:
                return

    def _fail(self, reason: Failure) -> None:
        """A fatal TLS error: send OpenSSL's alert, then close."""
        if self._tls_over:
            return
        self._tls_over = True
        self._reason = reason
        self.tls_failed(reason)
        self._drain(DRAIN_SIZE)
        self._drop_producer()
        self.transport.loseConnection()

    # -- ciphertext out ---------------------------------------------------------

    def _drain(self, size: int) -> None:
        """Write what OpenSSL has produced to TCP, in as few reads as it takes."""
        tls = self._tls
        if tls is None or self._writer is None:
            return
        write = self._writer.write
        take = tls.take
        while True:
            data = take(size)
            if not data:
                return
            write(data)
            if len(data) < size:
                return

    def write(self, data: bytes) -> None:
        """Send ``data`` to the client (after the handshake; buffered before it)."""
        if self._write_closed and not self._close_write_pending or self._tls_over:
            return
        if not self.handshake_done:
            if self._pre_handshake is None:
                self._pre_handshake = []
            self._pre_handshake.append(data)
            return
        tls = self._tls
        assert tls is not None
        size = len(data)
        if not size:
            return
        try:
            records, more = tls.seal(data)
        except TLS_ERROR:
            self._fail(Failure())
            return
        if not records:
            return
        writer = self._writer
        assert writer is not None
        writer.write(records)
        if more:
            self._drain(len(records))

    def writeSequence(self, data: list[bytes]) -> None:
        """Send each of ``data`` in turn."""
        for chunk in data:
            self.write(chunk)

    # -- closing ----------------------------------------------------------------

    def _peer_closed_write(self) -> None:
        """
        The client finished sending (close_notify, or a TCP FIN read as end
        of stream). A half-closeable wrapped protocol is told and may go on
        writing; once our side is closed too, the connection ends.
        """
        self._read_closed = True
        wrapped = self.wrappedProtocol
        if self.handshake_done and not self.disconnecting and IHalfCloseableProtocol.providedBy(wrapped):
            wrapped.readConnectionLost()
            if self._tls_over or not self._write_closed or self._close_write_pending:
                return
        self._finish()

    def _finish(self) -> None:
        """
        Both directions are done: answer the client's close_notify (if ours
        was not sent yet) and close the TCP connection. ``loseConnection``
        may run ``connectionLost`` before it returns, so it comes last.
        """
        if self._tls_over:
            return
        self._tls_over = True
        self._shutdown_tls()
        self._drop_producer()
        self.transport.loseConnection()

    def _shutdown_tls(self) -> None:
        tls = self._tls
        if tls is None:
            return
        tls.close_notify()  # (nothing before a handshake, or when already sent)
        self._drain(DRAIN_SIZE)

    def _send_close_notify(self) -> None:
        if self._read_closed:
            self._finish()
            return
        self._shutdown_tls()
        self._drop_producer()
        self.transport.loseWriteConnection()

    def _drop_producer(self) -> None:
        # A TCP transport with a producer registered waits for it to go away
        # before it closes or half-closes; nothing more will be written here.
        if self._producer is not None:
            self._producer = None
            self.transport.unregisterProducer()

    def readConnectionLost(self) -> None:
        """
        The client sent a TCP FIN: end of stream for OpenSSL, read as a
        half-close once the handshake is done (a failure before).
        """
        tls = self._tls
        if tls is None:
            self.transport.loseConnection()
            return
        if self._read_closed or self._tls_over:
            if self._write_closed or self._tls_over:
                self.transport.loseConnection()
            return
        tls.feed_eof()
        if not self.handshake_done:
            self._handshake()
            if not self._tls_over and not self.handshake_done:
                self._fail(Failure(Error([("", "", "unexpected eof while reading")])))
            return
        self._read_plaintext(tls)
        if not self._read_closed and not self._tls_over:
            self._peer_closed_write()

    def writeConnectionLost(self) -> None:
        """Our TCP write side is closed (after close_notify); nothing to do."""

    def loseWriteConnection(self) -> None:
        """Send close_notify (then a TCP FIN) and keep reading the client."""
        if self._write_closed or self._tls_over:
            return
        self._write_closed = True
        if self._read_closed:
            self.loseConnection()
            return
        if not self.handshake_done:
            self._close_write_pending = True
            return
        self._send_close_notify()

    def loseConnection(self) -> None:
        """Send close_notify and close once buffered records are written."""
        if self.disconnecting or not self.connected:
            return
        self.disconnecting = True
        self._write_closed = True
        if self._tls is None or not self.handshake_done:
            self._tls_over = True
            self._drop_producer()
            self.transport.loseConnection()
            return
        # close_notify and a FIN, then read on until the client's
        # close_notify or FIN: closing a socket with unread data in it
        # sends a reset, which can destroy the close_notify before the
        # client reads it (a client still sending a request body).
        self._send_close_notify()
        if not self._tls_over:
            self.closing()

    def closing(self) -> None:
        """
        Called when :meth:`loseConnection` waits for the client's end of
        the stream; a subclass bounds the wait.
        """

    def abortConnection(self) -> None:
        """Drop the connection now, buffered records included."""
        self.disconnecting = True
        self._tls_over = True
        self.transport.abortConnection()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.connected = False
        self._tls_over = True
        self._producer = None
        reason, self._reason = (self._reason or reason), None
        wrapped = self.wrappedProtocol
        if self._tls is not None and wrapped is not None:
            self._tls = None  # also breaks the connection ↔ app data cycle
            wrapped.connectionLost(reason)

    # -- transport interfaces for the wrapped protocol --------------------------

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        """Register ``producer`` on the TCP transport (stopped at once if TLS is over)."""
        if self._tls_over:
            producer.stopProducing()
            return
        self._producer = producer
        self.transport.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        """Unregister the wrapped protocol's producer."""
        self._drop_producer()

    def pauseProducing(self) -> None:
        """Stop reading from the client."""
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        """Read from the client again."""
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        """Give up on the client."""
        self.transport.stopProducing()

    def getPeer(self) -> Any:
        return self.transport.getPeer()

    def getHost(self) -> Any:
        return self.transport.getHost()

    def getPeerCertificate(self) -> None:
        """Client certificates are not requested."""
        return None

    def getTcpNoDelay(self) -> bool:
        return bool(self.transport.getTcpNoDelay())

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.transport.setTcpNoDelay(enabled)

    def getTcpKeepAlive(self) -> bool:
        return bool(self.transport.getTcpKeepAlive())

    def setTcpKeepAlive(self, enabled: bool) -> None:
        self.transport.setTcpKeepAlive(enabled)
