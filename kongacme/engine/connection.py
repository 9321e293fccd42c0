"""
A connection the lean engine accepted, until its ClientHello is whole:
read with ``MSG_PEEK``, so nothing is consumed until the engine knows it
serves the connection itself. The fast case goes on as a
:class:`~kongacme.engine.relay.Relay`; every other one is handed, untouched,
to the Twisted path (``IReactorSocket.adoptStreamConnection`` with the TLS
listener's own factory), which then behaves exactly as if it had accepted
the connection itself.
"""

from __future__ import annotations

import socket
from select import EPOLLET, EPOLLHUP, EPOLLIN, EPOLLRDHUP
from typing import TYPE_CHECKING, Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.logger import Logger
from zope.interface import implementer

from kongacme.errors import ClientHelloError
from kongacme.interfaces import IPollHandler
from kongacme.net import is_ip_literal, peer_name
from kongacme.proxy.connect import family_of
from kongacme.timers import Deadline
from kongacme.tls.alpn_challenge import is_challenge_hello
from kongacme.tls.clienthello import MAX_CLIENT_HELLO, ClientHello, parse_client_hello
from kongacme.engine.relay import Relay
from kongacme.engine.sockets import READ_SIZE, reset_on_close

if TYPE_CHECKING:
    from kongacme.engine.lean import LeanEngine
    from kongacme.engine.listener import LeanPort

log = Logger()

#: Enough to see a ClientHello that is too large (clienthello's own bound).
PEEK_SIZE = MAX_CLIENT_HELLO + 64 + 1


class SocketAddresses:
    """
    ``getPeer``/``getHost`` of an accepted socket as Twisted addresses
    (what :func:`kongacme.net.peer_name` and the PROXY header encoders take).
    """

    __slots__ = ("_sock", "_peer", "_host")

    def __init__(self, sock: socket.socket, peer: Any):
        self._sock = sock
        self._peer = peer
        self._host: Any = None

    def getPeer(self) -> IPv4Address | IPv6Address:
        return _address(self._sock.family, self._peer)

    def getHost(self) -> IPv4Address | IPv6Address:
        if self._host is None:
            self._host = self._sock.getsockname()
        return _address(self._sock.family, self._host)


def _address(family: int, sockaddr: Any) -> IPv4Address | IPv6Address:
    if family == socket.AF_INET6:
        return IPv6Address("TCP", sockaddr[0], sockaddr[1])
    return IPv4Address("TCP", sockaddr[0], sockaddr[1])


@implementer(IPollHandler)
class HelloReader:
    """
    Peeks at an accepted client until its ClientHello is whole, then either
    starts the fast path or hands the connection over.

    Edge-triggered: a peek leaves the bytes in the socket, so level
    triggering would report them again at once; each new segment (or the
    FIN) is a new edge.

    The ClientHello has usually arrived by the time the connection is
    accepted, so :meth:`start` reads it at once and the connection enters
    the epoll only if it has not (or only in part); when it mostly has not,
    the engine stops looking at once (:meth:`LeanEngine.look_at_once`).
    """

    def __init__(self, engine: "LeanEngine", sock: socket.socket, peer: Any, origin: "LeanPort"):
        self._engine = engine
        self._sock = sock
        self._fd = sock.fileno()
        self._origin = origin
        self._limit = origin.limit
        self._addresses = SocketAddresses(sock, peer)
        tls = engine.tls_factory
        self._deadline: Deadline | None = tls.wheel.call_later(tls.handshake_timeout, self._timed_out)
        self._done = False
        self._registered = False
        self._relay: Relay | None = None

    def start(self) -> None:
        """Read the ClientHello if it is there (and worth looking); else wait for it on the epoll."""
        engine = self._engine
        if engine.look_at_once():
            found = self._read_hello(0)
            engine.looked(found)
            if found or self._done:
                return
        self._registered = True
        # Registering reports what is there already (or came since the peek) at once.
        engine.loop.register(self._fd, EPOLLIN | EPOLLRDHUP | EPOLLET, self)

    def on_events(self, fd: int, events: int) -> None:
        self._read_hello(events)

    def _read_hello(self, events: int) -> bool:
        """Peek at what the client sent: ``False`` while the ClientHello is not whole yet."""
        buffer = self._engine.peek_buffer
        try:
            size = self._sock.recv_into(buffer, PEEK_SIZE, socket.MSG_PEEK)
        except BlockingIOError:
            return False
        except OSError:
            self._hand_over()  # the Twisted path sees the error and reports it
            return True
        if not size:
            self._hand_over()  # closed before a ClientHello: "abandoned" there
            return True
        try:
            hello = parse_client_hello(buffer, size)
        except ClientHelloError:
            self._hand_over()
            return True
        if hello is None:
            if events & (EPOLLRDHUP | EPOLLHUP):
                self._hand_over()
                return True
            return False
        self._decide(hello)
        return True

    def _decide(self, hello: ClientHello) -> None:
        """Serve ``hello`` here if it is the common case, else hand it over."""
        engine = self._engine
        tls = engine.tls_factory
        if hello.unservable is not None or hello.raw_server_name is not None:
            self._hand_over()  # a refusal or a log line: the Twisted path's
            return
        if tls.challenges is not None and is_challenge_hello(hello):
            self._hand_over()
            return
        name = hello.server_name
        cache = tls.cache
        certified = cache.lookup(name)
        fallback = certified is cache.fallback
        if fallback and name is not None and tls.gate is not None:
            self._hand_over()  # the gate may hold it (an order to start)
            return
        proxy = engine.proxy_factory
        route = proxy.router.route_for(name)
        if route is None or not proxy.connects_directly:
            self._hand_over()
            return
        host = route.host.strip("[]")
        if is_ip_literal(host):
            upstreams = [(family_of(host), (host, route.port))]
        else:
            known = proxy.names.cached(host, route.port)
            if known is None:
                self._hand_over()  # resolving it is the Twisted path's job
                return
            upstreams = list(known)
        try:
            first = self._sock.recv(READ_SIZE)
        except OSError:
            first = b""
        if not first:
            self._hand_over()
            return
        # The handshake deadline goes on with the relay (the same time),
        # once there is one: if making it fails, abort() still cancels it.
        self._done = True
        relay = self._relay = Relay(
            engine, self._sock, self._addresses, name, certified, fallback, route, upstreams, self._limit,
            self._deadline, self._registered, hello.offers_tls13,
        )
        self._deadline = None
        engine.relayed += 1
        relay.start(first)

    def _finish(self) -> None:
        self._done = True
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _hand_over(self) -> None:
        self._finish()
        self._engine.hand_over(self._sock, self._origin)

    def _timed_out(self) -> None:
        self._deadline = None
        if self._done:
            return
        log.info("TLS: handshake with {peer} timed out", peer=peer_name(self._addresses))
        self._engine.tls_factory.handshakes["timeout"] += 1
        self.abort()

    def abort(self) -> None:
        """Close the client now (or have the relay that took it over do so)."""
        if self._relay is not None:
            self._relay.abort()
            return
        if self._sock.fileno() < 0:
            return  # handed over, or closed already
        self._finish()
        self._engine.loop.unregister(self._fd)
        reset_on_close(self._sock)
        self._sock.close()
        if self._limit is not None:
            self._limit.release()
