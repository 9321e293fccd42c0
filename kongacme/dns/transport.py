"""
DNS exchanges over Twisted's own transports: a message over UDP (one
socket shared by every exchange of a client), again over TCP when the
answer is truncated (RFC 7766 §5; RFC 1035 §4.2.2's two-byte length
prefix). Nothing here blocks the reactor.
"""

from __future__ import annotations

import secrets
import struct
from typing import Any, Optional

import attrs
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import DatagramProtocol, Protocol

from kongacme.errors import DNSError
from kongacme.net import is_ip_literal

#: Seconds between UDP retransmissions of an unanswered message.
RETRANSMIT = 1.0


def describe_server(server: tuple[str, int]) -> str:
    """``host:port`` (IPv6 in brackets), for messages."""
    host, port = server
    return "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)


def _truncated(wire: bytes) -> bool:
    # RFC 1035 §4.1.1: TC is bit 1 of the third header byte.
    return len(wire) >= 3 and bool(wire[2] & 0x02)


@attrs.define
class _Pending:
    server: tuple[str, int]
    wire: bytes
    answer: Deferred[bytes]
    resend: Any = None


class _Datagrams(DatagramProtocol):
    """
    One UDP socket for every exchange of a :class:`DNSClient`: answers
    are matched to queries by id and source (RFC 5452 §4.3); the others
    are ignored. Unanswered messages are retransmitted.
    """

    # No "Starting protocol" line (the port is opened once anyway).
    noisy = False

    def __init__(self, clock: IReactorTime):
        self._clock = clock
        self.pending: dict[bytes, _Pending] = {}
        #: Set by :meth:`DNSClient.close` while exchanges are in flight:
        #: fires once the last one ended and the socket is closed.
        self.closed: Optional[Deferred[None]] = None

    def finished(self, key: bytes) -> None:
        """An exchange ended: forget it, and close the socket if it was the last one of a closed client."""
        self.pending.pop(key, None)
        if self.closed is not None and not self.pending and self.transport is not None:
            closed = self.closed
            maybeDeferred(self.transport.stopListening).addBoth(lambda _: closed.called or closed.callback(None))

    def send(self, pending: _Pending) -> None:
        if self.transport is None or pending.answer.called:
            return
        self.transport.write(pending.wire, pending.server)
        pending.resend = self._clock.callLater(RETRANSMIT, self.send, pending)

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        pending = self.pending.get(data[:2])
        if pending is not None and tuple(addr[:2]) == pending.server and not pending.answer.called:
            pending.answer.callback(data)

    def stopProtocol(self) -> None:
        for pending in list(self.pending.values()):
            if not pending.answer.called:
                pending.answer.errback(DNSError(describe_server(pending.server), "DNS client closed"))


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


async def _tcp(reactor: Any, clock: IReactorTime, server: tuple[str, int], wire: bytes, timeout: float) -> bytes:
    host, port = server
    endpoint_type = TCP6ClientEndpoint if ":" in host else TCP4ClientEndpoint
    endpoint = endpoint_type(reactor, host, port, timeout=max(1, int(timeout)))
    answer: Deferred[bytes] = Deferred()
    protocol = _Stream(wire, answer)
    try:
        await connectProtocol(endpoint, protocol)
    except Exception as e:
        raise DNSError(describe_server(server), "TCP connection failed: %s" % (e,)) from None
    try:
        return await _with_timeout(answer, clock, timeout, describe_server(server))
    except DNSError as e:
        raise DNSError(describe_server(server), e.reason) from None
    finally:
        if protocol.transport is not None:
            protocol.transport.loseConnection()


@attrs.define
class DNSClient:
    """
    DNS exchanges over one UDP socket per address family (opened on first
    use, closed by :meth:`close`), with TCP when an answer is truncated.

    :ivar _reactor: provides ``IReactorUDP`` and ``IReactorTCP``.
    :ivar _clock: timers (default ``_reactor``).
    """

    _reactor: Any
    _clock: Optional[IReactorTime] = None
    _ports: dict[str, tuple[Any, _Datagrams]] = attrs.field(factory=dict, init=False)

    @property
    def _timers(self) -> IReactorTime:
        return self._clock if self._clock is not None else self._reactor

    def _socket(self, family: str) -> _Datagrams:
        if family not in self._ports:
            protocol = _Datagrams(self._timers)
            port = self._reactor.listenUDP(0, protocol, interface="::" if family == "ipv6" else "")
            self._ports[family] = (port, protocol)
        return self._ports[family][1]

    def free_id(self) -> int:
        """A message id no exchange in flight uses (set it before signing)."""
        pending = [protocol.pending for _, protocol in self._ports.values()]
        while True:
            candidate = secrets.randbelow(65536)
            if not any(struct.pack("!H", candidate) in each for each in pending):
                return candidate

    def exchange(self, server: tuple[str, int], wire: bytes, timeout: float) -> Deferred[bytes]:
        """
        Send the DNS message ``wire`` to ``server`` and return its answer's
        wire form: over UDP (retransmitted every :data:`RETRANSMIT`
        seconds), then over TCP if that answer is truncated.

        :param server: ``(IP address, port)``.
        :param timeout: seconds for each of the two transports.
        :return: ``Deferred`` firing with the answer's bytes, or failing
            with :class:`~kongacme.errors.DNSError` (no answer in time).
        :raises ValueError: when ``server`` is not an IP address, or a
            message with the same id is in flight (see :meth:`free_id`).
        """
        if not is_ip_literal(server[0]):
            raise ValueError("server must be an IP address, not %r" % (server[0],))
        protocol = self._socket("ipv6" if ":" in server[0] else "ipv4")
        key = wire[:2]
        if key in protocol.pending:
            raise ValueError("a message with id %d is in flight already" % (struct.unpack("!H", key)[0],))
        pending = _Pending(server, wire, Deferred())
        protocol.pending[key] = pending

        def done(result: Any) -> Any:
            if pending.resend is not None and pending.resend.active():
                pending.resend.cancel()
            protocol.finished(key)
            return result

        answer = _with_timeout(pending.answer, self._timers, timeout, describe_server(server)).addBoth(done)
        protocol.send(pending)

        async def run() -> bytes:
            data = await answer
            if _truncated(data):
                data = await _tcp(self._reactor, self._timers, server, wire, timeout)
            return data

        return Deferred.fromCoroutine(run())

    def close(self) -> Deferred[None]:
        """
        Close the sockets; harmless twice. Exchanges in flight (an order
        that started before a reload replaced the issuer) end first, each
        socket closing after its last one; a later exchange opens a new
        socket.

        :return: ``Deferred`` firing once every socket is closed.
        """
        ports, self._ports = list(self._ports.values()), {}
        closing = []
        for port, protocol in ports:
            if protocol.pending:
                protocol.closed = Deferred()
                closing.append(protocol.closed)
            else:
                closing.append(maybeDeferred(port.stopListening))
        return gatherResults(closing).addCallback(lambda _: None)
