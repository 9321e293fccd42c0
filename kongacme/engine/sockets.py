"""
The lean engine's socket helpers: what its relay does to a socket beyond
``recv``/``send``.
"""

from __future__ import annotations

import socket
import struct

#: Bytes asked of a socket per ``recv`` (ciphertext from the client,
#: plaintext from the upstream).
READ_SIZE = 1 << 16

#: Bytes asked of the upstream per ``recv`` once reads come back full (a
#: download): 4x fewer rounds through the interpreter per byte.
BULK_READ_SIZE = 1 << 18

#: A stream socket created non-blocking (Linux, as epoll is): no ``ioctl``
#: after ``socket()``.
NONBLOCKING_STREAM = socket.SOCK_STREAM | socket.SOCK_NONBLOCK

#: ``SO_LINGER`` on with a zero timeout: ``close`` sends a reset.
_RESET = struct.pack("ii", 1, 0)


def send_now(sock: socket.socket, data: bytes | memoryview, flags: int = 0) -> int:
    """Bytes of ``data`` the kernel takes now (0 with its buffer full); ``OSError`` if the socket is dead."""
    try:
        return sock.send(data, flags)
    except BlockingIOError:
        return 0


def reset_on_close(sock: socket.socket) -> None:
    """Have ``sock``'s ``close`` send a TCP reset rather than a FIN (an abort)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
    except OSError:
        pass
