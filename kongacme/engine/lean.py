"""
The lean engine: what its listeners, connections and relays share.
"""

from __future__ import annotations

import socket
from typing import Any

import attrs
from twisted.internet import tcp
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.logger import Logger

from kongacme.engine.connection import PEEK_SIZE, HelloReader
from kongacme.engine.listener import LeanPort
from kongacme.engine.loop import COMPILED, EventLoop

log = Logger()

#: Misses in a row after which new connections are no longer all looked at
#: for a ClientHello as they are accepted (:meth:`LeanEngine.look_at_once`).
EARLY_HELLO_CREDIT = 16

#: Without credit, one new connection in this many is looked at all the same.
EARLY_HELLO_PROBE = 16

#: The Twisted listening ports the engine can take over: plain TCP, and
#: sockets systemd passes (socket activation; only its INET and INET6
#: ones are TCP ports: :meth:`LeanEngine.take` checks the port).
LEAN_KINDS = ("tcp", "tcp6", "systemd")

#: The two paths of a connection the engine accepted (the ``path`` label of
#: ``kongacme_engine_connections_total``): served here, or handed over.
ENGINE_PATHS = ("lean", "handed_over")


def served_by_engine(description: str) -> bool:
    """
    Whether the TLS endpoint ``description`` is of a kind the lean engine
    accepts on (``tcp:``, ``tcp6:``, ``systemd:``; a ``systemd:`` socket
    of ``domain=UNIX`` is not a TCP port, which :meth:`LeanEngine.take`
    leaves to Twisted).
    """
    return description.split(":", 1)[0].strip().lower() in LEAN_KINDS


@attrs.define(eq=False)
class LeanEngine:
    """
    The TLS listener's common case on one epoll of kongacme's own.

    Settings are read from the factories on every new connection, so a
    reload that changes them (routes, timeouts, the gate) applies to the
    next connection, as on the Twisted path.

    :param reactor: ``IReactorFDSet``, ``IReactorSocket``, ``IReactorTime``.
    :param tls_factory: the Twisted path's
        :class:`~kongacme.tls.protocol.TLSServerFactory`: its cache,
        builder, gate, timeouts, wheel and outcome counters are the engine's too.
    :param proxy_factory: the Twisted path's
        :class:`~kongacme.proxy.forward.ProxyFactory` (router, connect and
        idle timeouts, upstream name cache).
    :param compiled: the loop's compiled dispatch
        (:attr:`kongacme.engine.loop.EventLoop.compiled`; None: Python's).

    :ivar relayed: connections served here, counted when their relay
        starts (the decision, as ``handed_over`` is).
    :ivar handed_over: connections given to the Twisted path.
    :ivar served: connections served here that have ended.
    """

    reactor: Any
    tls_factory: Any
    proxy_factory: Any
    compiled: Any = attrs.field(default=COMPILED, kw_only=True)
    loop: EventLoop = attrs.field(init=False)
    peek_buffer: bytearray = attrs.field(init=False, factory=lambda: bytearray(PEEK_SIZE))
    relayed: int = attrs.field(init=False, default=0)
    handed_over: int = attrs.field(init=False, default=0)
    served: int = attrs.field(init=False, default=0)
    #: New connections that may still be looked at for a ClientHello at
    #: accept (see :meth:`look_at_once`).
    early_hellos: int = attrs.field(init=False, default=EARLY_HELLO_CREDIT)
    #: Connections accepted since the last look at once without credit.
    since_look: int = attrs.field(init=False, default=0)
    #: Relays with a socket taken out of the epoll (``Relay._park``): the
    #: loop's handlers may not show them.
    parked: set = attrs.field(init=False, factory=set)

    @loop.default
    def _make_loop(self) -> EventLoop:
        return EventLoop(self.reactor, self.compiled)

    def take(self, description: str, port: Any, serving: Any, limit: Any) -> LeanPort | None:
        """
        Accept on Twisted listening ``port`` (opened for ``description``)
        from now on, if it is a TCP one (``tcp:``, ``tcp6:``, or a
        ``systemd:`` socket of ``domain=INET``/``INET6``); ``None`` if not
        (it stays Twisted's: ``haproxy:``, ``unix:``, a UNIX ``systemd:``
        socket...).

        :param serving: the factory Twisted serves the port with: handed
            over connections are adopted with it.
        :param limit: the listener's connection limit (or ``None``).
        """
        if description and not served_by_engine(description):
            return None
        # A TCP port, by its address (a UNIX port is a tcp.Port subclass too).
        if not isinstance(port, tcp.Port) or not isinstance(port.getHost(), (IPv4Address, IPv6Address)):
            return None
        self.loop.start()
        return LeanPort(self, port, serving, limit)

    def serve(self, sock: socket.socket, peer: Any, origin: LeanPort) -> None:
        """A connection ``origin`` accepted (counted in its limit already; non-blocking)."""
        reader = HelloReader(self, sock, peer, origin)
        try:
            reader.start()
        except Exception:
            # As the loop does for an error in a handler: this connection
            # ends, the listener goes on accepting.
            log.failure("engine: unexpected error on a new connection, closing it")
            reader.abort()

    def look_at_once(self) -> bool:
        """
        Whether to look for a new connection's ClientHello as it is
        accepted. It is usually there already (it saves an epoll round), but
        not when clients are slower to send it than the engine is to accept
        (a load generator opening thousands at once): after
        :data:`EARLY_HELLO_CREDIT` misses in a row, only every
        :data:`EARLY_HELLO_PROBE`-th connection is looked at, until one has
        it again.
        """
        if self.early_hellos > 0:
            return True
        self.since_look += 1
        if self.since_look < EARLY_HELLO_PROBE:
            return False
        self.since_look = 0
        return True

    def looked(self, found: bool) -> None:
        """What a look at once found (see :meth:`look_at_once`)."""
        if found:
            self.early_hellos = EARLY_HELLO_CREDIT
        elif self.early_hellos > 0:
            self.early_hellos -= 1

    def hand_over(self, sock: socket.socket, origin: LeanPort) -> None:
        """
        Give ``sock`` (nothing read from it) to the Twisted path, served by
        ``origin``'s factory, and close the engine's descriptor for it. The
        connection is counted once: the factory counts it again.
        """
        fd = sock.fileno()
        self.loop.unregister(fd)
        self.handed_over += 1
        if origin.limit is not None:
            origin.limit.release()
        try:
            self.reactor.adoptStreamConnection(fd, sock.family, origin.serving)
        except Exception:
            log.failure("engine: handing a connection to the Twisted path failed")
        finally:
            sock.close()  # the reactor took a duplicate

    def stop(self) -> None:
        """
        The daemon is stopping: drop what the engine still holds (listening
        copies, hellos, relays: their ``abort``) and take the epoll off the
        reactor, so nothing of it outlives the service.
        """
        for handler in list(dict.fromkeys([*self.loop.handlers.values(), *self.parked])):
            try:
                handler.abort()
            except Exception:
                log.failure("engine: dropping a connection at stop failed")
        self.loop.stop()

    def connections(self) -> dict[str, int]:
        """Connections so far by path (:data:`ENGINE_PATHS`), counted when the engine decided."""
        return {"lean": self.relayed, "handed_over": self.handed_over}

    def finished(self, from_client: int, from_upstream: int) -> None:
        """A served connection ended: add its bytes where the proxy counts them (workers)."""
        self.served += 1
        counted = getattr(self.proxy_factory, "bytes", None)
        if counted is not None:
            counted["from_clients"] += from_client
            counted["from_upstreams"] += from_upstream
