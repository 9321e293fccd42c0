"""
One DNS exchange over Twisted's own transports: a query over UDP, again
over TCP when the answer is truncated (RFC 7766 §5; RFC 1035 §4.2.2's
two-byte length prefix). Nothing here blocks the reactor.
"""

from __future__ import annotations

import struct
from typing import Any, Optional

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import DatagramProtocol, Protocol

from kongacme.errors import DNSError
from kongacme.net import is_ip_literal

#: Seconds between UDP retransmissions of an unanswered message.
RETRANSMIT = 1.0
#: The largest DNS message over TCP (RFC 1035 §4.2.2: a 16-bit length).
MAX_TCP_MESSAGE = 65535


def _describe(server: tuple[str, int]) -> str:
    host, port = server
    return "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)


def _truncated(wire: bytes) -> bool:
    # RFC 1035 §4.1.1: TC is bit 1 of the third header byte.
    return len(wire) >= 3 and bool(wire[2] & 0x02)


class _Datagram(DatagramProtocol):
    """Sends one message to one server, retransmitting, and keeps the first answer with its id."""

    # No "starting on port N" line for every exchange.
    noisy = False

    def __init__(self, wire: bytes, server: tuple[str, int], clock: IReactorTime, answer: Deferred[bytes]):
        self._wire = wire
        self._server = server
        self._clock = clock
        self._answer = answer
        self._resend: Any = None

    def startProtocol(self) -> None:
        self._send()

    def _send(self) -> None:
        assert self.transport is not None
        self.transport.write(self._wire, self._server)
        self._resend = self._clock.callLater(RETRANSMIT, self._send)

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        # RFC 5452 §4.3: an answer must come from the server and carry the
        # query's id (the first two bytes); anything else is ignored.
        if tuple(addr[:2]) == self._server and data[:2] == self._wire[:2] and not self._answer.called:
            self._answer.callback(data)

    def stopProtocol(self) -> None:
        if self._resend is not None and self._resend.active():
            self._resend.cancel()


class _Stream(Protocol):
    """One message over TCP, length-prefixed."""

    def __init__(self, wire: bytes, answer: Deferred[bytes]):
        self._wire = wire
        self._answer = answer
        self._buffer = b""

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(struct.pack("!H", len(self._wire)) + self._wire)

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) >= 2:
            (length,) = struct.unpack("!H", self._buffer[:2])
            if len(self._buffer) >= 2 + length and not self._answer.called:
                assert self.transport is not None
                self._answer.callback(self._buffer[2 : 2 + length])
                self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        if not self._answer.called:
            self._answer.errback(DNSError("", "connection closed before a whole answer"))


def _with_timeout(answer: Deferred[bytes], clock: IReactorTime, timeout: float, server: str) -> Deferred[bytes]:
    def expired() -> None:
        if not answer.called:
            answer.errback(DNSError(server, "no answer within %g s" % (timeout,)))

    timer = clock.callLater(timeout, expired)

    def done(result: Any) -> Any:
        if timer.active():
            timer.cancel()
        return result

    return answer.addBoth(done)


async def _udp(reactor: Any, clock: IReactorTime, server: tuple[str, int], wire: bytes, timeout: float) -> bytes:
    answer: Deferred[bytes] = Deferred()
    protocol = _Datagram(wire, server, clock, answer)
    port = reactor.listenUDP(0, protocol, interface="::" if ":" in server[0] else "")
    try:
        return await _with_timeout(answer, clock, timeout, _describe(server))
    finally:
        await defer.maybeDeferred(port.stopListening)


async def _tcp(reactor: Any, clock: IReactorTime, server: tuple[str, int], wire: bytes, timeout: float) -> bytes:
    host, port = server
    endpoint_type = TCP6ClientEndpoint if ":" in host else TCP4ClientEndpoint
    endpoint = endpoint_type(reactor, host, port, timeout=max(1, int(timeout)))
    answer: Deferred[bytes] = Deferred()
    protocol = _Stream(wire, answer)
    try:
        await connectProtocol(endpoint, protocol)
    except Exception as e:
        raise DNSError(_describe(server), "TCP connection failed: %s" % (e,)) from None
    try:
        return await _with_timeout(answer, clock, timeout, _describe(server))
    except DNSError as e:
        raise DNSError(_describe(server), e.reason) from None
    finally:
        if protocol.transport is not None:
            protocol.transport.loseConnection()


def exchange(
    reactor: Any, server: tuple[str, int], wire: bytes, timeout: float, clock: Optional[IReactorTime] = None
) -> Deferred[bytes]:
    """
    Send the DNS message ``wire`` to ``server`` and return its answer's
    wire form: over UDP (retransmitted every :data:`RETRANSMIT` seconds),
    then over TCP if that answer is truncated.

    :param reactor: provides ``IReactorUDP`` and ``IReactorTCP``.
    :param server: ``(IP address, port)``.
    :param timeout: seconds for each of the two transports.
    :param clock: timers (default ``reactor``).
    :return: ``Deferred`` firing with the answer's bytes, or failing with
        :class:`~kongacme.errors.DNSError` (no answer in time, refused).
    """
    if not is_ip_literal(server[0]):
        raise ValueError("server must be an IP address, not %r" % (server[0],))
    timers = clock if clock is not None else reactor

    async def run() -> bytes:
        answer = await _udp(reactor, timers, server, wire, timeout)
        if _truncated(answer):
            answer = await _tcp(reactor, timers, server, wire, timeout)
        return answer

    return Deferred.fromCoroutine(run())
