"""
The upstream side of a lean-engine :class:`~kongacme.engine.relay.Relay`:
the non-blocking connect to the route's addresses in turn (with the connect
deadline), the PROXY header first, then the relay of the upstream's bytes
to the client as TLS records, flow control by what each ``send`` leaves,
and the upstream's FIN or failure.

A mixin: the relay's state lives on the relay (one object per connection,
no call between two objects on the data path); the client side and the
connection's life are in :mod:`kongacme.engine.relay`.
"""

from __future__ import annotations

import errno
import os
import socket
from select import EPOLLIN, EPOLLOUT
from typing import TYPE_CHECKING

from twisted.internet.error import TimeoutError as ConnectTimeout
from twisted.internet.error import getConnectError
from twisted.logger import Logger
from twisted.python.failure import Failure

from kongacme.engine.sockets import BULK_READ_SIZE, NONBLOCKING_STREAM, READ_SIZE, send_now
from kongacme.failures import describe_failure
from kongacme.net import peer_name
from kongacme.proxy.proxyproto import v1_header, v2_header
from kongacme.proxy.routes import route_name
from kongacme.tls.session import TLS_ERROR

if TYPE_CHECKING:
    from kongacme.engine.relay import Relay

#: The relay's namespace: a connection's log lines come from one place.
log = Logger(namespace="kongacme.engine.relay")

_IN_PROGRESS = (errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN)


class UpstreamSide:
    """The upstream half of :class:`~kongacme.engine.relay.Relay` (its methods only)."""

    def _dial(self: "Relay") -> None:
        """Connect to the next of the route's addresses."""
        family, address = self._upstreams.pop(0)
        # Non-blocking from the start (Linux: no ioctl after socket()).
        up = socket.socket(family, NONBLOCKING_STREAM)
        # Each send is a whole record or a whole read from the client: no
        # reason to hold it back for Nagle (HAProxy does the same).
        up.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._up = up
        self._ufd = up.fileno()
        code = up.connect_ex(address)
        if code and code not in _IN_PROGRESS:
            self._connect_failed(code)
            return
        # An upstream on this host (loopback): the three-way handshake is
        # over before connect() returns, so there is no EPOLLOUT round to
        # wait for, nor a connect deadline.
        self._dialled(code == 0 or _connected_now(up))

    def _dialled(self: "Relay", connected: bool) -> None:
        """The upstream's socket (``_up``) is connected, or connecting: watch it."""
        if connected:
            self._upstream_mask = EPOLLIN
            self._loop.register(self._ufd, EPOLLIN, self)
            self._connected_to_upstream()
            return
        self._upstream_mask = EPOLLOUT
        self._loop.register(self._ufd, EPOLLOUT, self)
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = self._engine.proxy_factory.wheel.call_later(
            self._engine.proxy_factory.connect_timeout, self._connect_timed_out
        )

    def _upstream(self: "Relay") -> socket.socket:
        """The upstream's socket object (made on first use for a descriptor the compiled module dialled)."""
        up = self._up
        if up is None:
            up = self._up = socket.socket(self._up_family, NONBLOCKING_STREAM, 0, self._ufd)
        return up

    def _connect_finished(self: "Relay") -> None:
        """``EPOLLOUT`` on a connecting upstream: connected, or failed (``SO_ERROR``)."""
        up = self._upstream()
        code = up.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            self._connect_failed(code)
            return
        self._connected_to_upstream()

    def _connected_to_upstream(self: "Relay") -> None:
        """The upstream is connected: the idle deadline, the PROXY header and what waited."""
        self._connected = True
        self._cancel_deadline()
        self._last_activity = self._seconds()
        self._deadline = self._engine.proxy_factory.wheel.call_later(self._idle_timeout, self._check_idle)
        pending = self._to_upstream
        self._to_upstream: list[bytes] = []
        self._pending_size = 0
        header = self._proxy_header()
        data = b"".join([header] + pending) if header or len(pending) > 1 else (pending[0] if pending else b"")
        if data:
            self._send_upstream(data)
        if self._client_eof and self._upstream_backlog is None and not self._done:
            self._shut_upstream()

    def _connect_failed(self: "Relay", code: int) -> None:
        self._drop_upstream()
        if self._upstreams:
            self._dial()
            return
        self._upstream_failed(Failure(getConnectError((code, os.strerror(code)))))

    def _connect_timed_out(self: "Relay") -> None:
        self._deadline = None
        if self._done or self._connected:
            return
        self._drop_upstream()
        route = self.route
        self._upstream_failed(Failure(ConnectTimeout("connecting to %s:%d" % (route.host, route.port))))

    def _upstream_failed(self: "Relay", failure: Failure) -> None:
        log.warn(
            "upstream {upstream} for {server_name} failed: {reason}",
            upstream=route_name(self.route),
            server_name=self.server_name,
            peer=peer_name(self._addresses),
            reason=describe_failure(failure),
        )
        self._close()

    def _send_upstream(self: "Relay", data: bytes | memoryview) -> None:
        if not self._connected:
            self._to_upstream.append(bytes(data))
            self._pending_size += len(data)
            return
        if self._upstream_backlog is not None:
            self._upstream_backlog = bytes(self._upstream_backlog) + bytes(data)
            return
        try:
            sent = send_now(self._up or self._upstream(), data)
        except OSError as e:
            self._upstream_lost(e)
            return
        if sent < len(data):
            self._upstream_backlog = memoryview(data)[sent:]

    def _flush_upstream(self: "Relay") -> None:
        pending = self._upstream_backlog
        assert pending is not None
        self._upstream_backlog = None
        self._send_upstream(pending)
        if self._upstream_backlog is None and self._client_eof and not self._closing and not self._done:
            self._shut_upstream()

    def _shut_upstream(self: "Relay") -> None:
        if self._upstream_shut or self._ufd < 0:
            return
        self._upstream_shut = True
        try:
            self._upstream().shutdown(socket.SHUT_WR)
        except OSError:
            pass
        if self._upstream_eof:
            # Both directions are over: nothing more to do with it (and a
            # level-triggered EPOLLHUP cannot be masked).
            self._drop_upstream()

    def _read_upstream(self: "Relay") -> None:
        """
        The upstream is readable: what it sent becomes records to the
        client. In the steady state (as
        :meth:`~kongacme.engine.relay.Relay._read_client`) they are sent
        here, not through ``_send_client``'s checks; a short ``send`` ends
        the steady state.
        """
        up = self._up or self._upstream()
        asked = self._upstream_read
        try:
            data = up.recv(asked)
        except BlockingIOError:
            return
        except OSError as e:
            self._upstream_lost(e)
            self._steady = False
            return
        if not data:
            self._upstream_ended()
            self._steady = False
            return
        size = len(data)
        # A full read is a bulk transfer: read more at a time (fewer
        # interpreter rounds per byte); a short one, back to the small size
        # (a large buffer per read costs small replies more than it saves).
        if size == asked:
            self._upstream_read = BULK_READ_SIZE
        elif asked != READ_SIZE:
            self._upstream_read = READ_SIZE
        self.received_from_upstream += size
        self._last_activity = self._seconds()
        try:
            records, more = self._tls.seal(data)
        except TLS_ERROR as e:
            self._client_lost(e)
            self._steady = False
            return
        if not records:
            return
        if not self._steady:
            self._send_client(records)
        else:
            # _send_client's checks (tickets held, records waiting) hold.
            try:
                sent = self._sock.send(records)
            except BlockingIOError:
                sent = 0
            except OSError as e:
                self._client_lost(e)
                self._steady = False
                return
            if sent < len(records):
                self._to_client = memoryview(records)[sent:]
                more = True  # the steady state is over: look again below
        if more:
            self._drain()
            self._steady = False

    def _upstream_ended(self: "Relay") -> None:
        """The upstream's FIN: close_notify, then a FIN once the client has every record."""
        self._upstream_eof = True
        if self._upstream_shut:
            self._drop_upstream()
        self._send_close_notify()

    def _upstream_lost(self: "Relay", error: OSError) -> None:
        log.info(
            "upstream {upstream} for {server_name} closed the connection: {reason}",
            upstream=route_name(self.route),
            server_name=self.server_name,
            reason=describe_failure(Failure(error)),
        )
        self._close()

    def _proxy_header(self: "Relay") -> bytes:
        kind = self.route.proxy_protocol
        if kind is None:
            return b""
        source, destination = self._addresses.getPeer(), self._addresses.getHost()
        if kind == "v1":
            return v1_header(source, destination)
        alpn = self._tls.alpn()
        return v2_header(source, destination, server_name=self.server_name, alpn=alpn)


def _connected_now(sock: socket.socket) -> bool:
    """Whether a socket whose ``connect`` said "in progress" is connected already (``getpeername`` works)."""
    try:
        sock.getpeername()
    except OSError:
        return False
    return True
