"""
Writing to a TCP transport's socket directly while nothing is queued.

Twisted's ``transport.write`` queues the bytes, registers the socket for
writability (an ``epoll_ctl``), sends on the next reactor turn and then
unregisters it (another ``epoll_ctl``). For a proxy's small writes (a
handshake flight, a request, a response) the kernel's send buffer has room
nearly always, so :class:`SocketWriter` calls ``send`` at once. The first
time the kernel takes less than all of it, the rest goes to
``transport.write`` and so does every later write on that connection: from
then on Twisted's queue (and its producer flow control) owns the order.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet.tcp import Connection


class SocketWriter:
    """
    ``write`` for one TCP transport: straight to its socket
    (``ISystemHandle.getHandle``) until a send is short, then through the
    transport. Transports that are not Twisted TCP connections (a test's
    string transport, a wrapper) always go through ``transport.write``.

    Every write to the transport must go through the same writer, or a
    direct send could overtake bytes Twisted has queued.
    """

    __slots__ = ("_transport", "_send")

    def __init__(self, transport: Any):
        self._transport = transport
        self._send = None
        if isinstance(transport, Connection):
            handle = transport.getHandle()
            if isinstance(handle, socket.socket):
                self._send = handle.send

    @property
    def direct(self) -> bool:
        """Whether writes still go straight to the socket."""
        return self._send is not None

    def write(self, data: bytes) -> None:
        """Send ``data`` now if the kernel takes it all; else queue the rest."""
        send = self._send
        if send is not None:
            try:
                sent = send(data)
            except OSError:
                # EAGAIN, or an error Twisted will see and report itself.
                sent = 0
            if sent == len(data):
                return
            self._send = None
            if sent:
                data = data[sent:]
        self._transport.write(data)
