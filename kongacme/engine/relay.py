"""
One fast-path connection after its ClientHello: the TLS handshake over
memory BIOs, a non-blocking connect to the upstream, then the relay both
ways — all on the engine's epoll, no Twisted transport.

The TLS session comes from ``ContextBuilder.session_for``
(:mod:`kongacme.tls.session`): pyOpenSSL for a certificate's first
connections (the route's ALPN through the context's select callback, this
object the app data), the standard library's ``ssl`` on a context of its
own (carrying the route's ALPN) once the certificate is busy and for a
client offering TLS 1.3.

What it keeps of the Twisted path (:mod:`kongacme.tls.pump`,
:mod:`kongacme.proxy.forward`): the upstream
dialled after the handshake, the PROXY header first, flow control both ways
(a side is not read while the other side's socket buffer is full: what is
left of a ``send`` waits for ``EPOLLOUT``), half-close both ways (RFC 8446
§6.1: the upstream's FIN becomes close_notify and a FIN to the client; the
client's close_notify or FIN becomes ``shutdown(SHUT_WR)`` upstream), the
handshake, connect and idle deadlines, the outcome counters and the log
lines. The upstream half (connect, PROXY header, reading the upstream) is
:class:`~kongacme.engine.upstream.UpstreamSide`, a mixin of :class:`Relay`.

The common case has a short path of its own: once the handshake is done,
the upstream connected and nothing is pending, held or ending on either
side (the steady state, :meth:`Relay._rearm`), a readable socket is read,
its bytes go through TLS and out on the other socket with none of the
general path's checks, and only a departure from it — a short ``send``, a
record cut across segments, a FIN, close_notify, an error — goes the
general way (about a third fewer interpreter instructions per kept-alive
request: bench/RESULTS.md).

Where the compiled module :mod:`kongacme.engine._steady` is built and the
session is the standard library's (``whole_writes``), the steady state is
served in C instead: :meth:`Relay._serve_compiled` puts both sockets in the
loop's ``steady`` table while the state holds, the module's dispatch reads,
calls the session's own ``feed``/``read``/``write``/``take`` and sends, and
any departure comes back here as :meth:`Relay._left_steady` with what was
read, to go the general way. Counts and the last activity are kept in the
``Pair`` meanwhile and folded in (:meth:`Relay._fold`). The TLS 1.3 session
tickets held for the first records to the client go into the ``Pair``
(``Pair.held``), so that the first reply is served there too.

With a session of the own binding (:mod:`kongacme.tls._openssl`, called
through its C API) the compiled module does more of a connection: the rest
of the handshake after the ClientHello's answer (:meth:`Relay._serve_handshake`;
the dial and what came with the Finished included, the relay told by
:meth:`Relay._established`), and both ends (the client's close_notify passed
on upstream, the upstream's FIN answered with close_notify; the relay only
releases). Every other turn comes back through :meth:`Relay._left_steady`,
and an event the module leaves here first takes its state back
(:meth:`Relay._taken_back`). Per handshake, the interpreter's instructions
fell from 236,780 to 146,509 with the engine's other cuts of session 23
(bench/RESULTS.md).
"""

from __future__ import annotations

import os
import socket
from select import EPOLLERR, EPOLLHUP, EPOLLIN, EPOLLOUT
from socket import MSG_MORE
from typing import TYPE_CHECKING, Any, Callable

from OpenSSL.SSL import Error
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from kongacme.engine.sockets import READ_SIZE, reset_on_close, send_now
from kongacme.engine.upstream import UpstreamSide
from kongacme.interfaces import IPollHandler
from kongacme.net import peer_name
from kongacme.proxy.routes import Route
from kongacme.timers import Deadline
from kongacme.tls.pump import DRAIN_SIZE, represents_eof
from kongacme.tls.openssl import compiled as _openssl
from kongacme.tls.records import count_records
from kongacme.tls.protocol import describe_tls_failure
from kongacme.tls.session import CLOSED, TLS_ERROR, WANT_READ

if TYPE_CHECKING:
    from kongacme.engine.connection import SocketAddresses
    from kongacme.engine.lean import LeanEngine

log = Logger()

#: The own binding's session type (None where it is not built): the
#: compiled module does the handshake of such a session (Relay._serve_handshake).
NATIVE_SESSION: Any = _openssl.Session if _openssl is not None else None

#: Plaintext taken from OpenSSL per ``recv``: more than a record's 16 KiB.
PLAIN_SIZE = 1 << 15

#: Plaintext held for an upstream still connecting before the client is
#: no longer read.
MAX_PENDING = 1 << 18

_GONE = EPOLLHUP | EPOLLERR

#: The mask of a socket taken out of the epoll for now (see ``Relay._park``).
_PARKED = -1

#: Why the compiled steady state handed an event to :meth:`Relay._left_steady`
#: (the codes of kongacme/engine/_steady.c): what ``recv`` gave the client
#: was not one whole record (``b""``: a FIN); the client's socket failed;
#: its close_notify; TLS ``read`` failed; the upstream's socket failed; the
#: upstream took part of the plaintext; the upstream's FIN; the client took
#: part of the records; the upstream's FIN after the client's close_notify,
#: both ends done there (our close_notify sent, or what the client did not
#: take of it); the handshake step's TLS error; the handshake done there, not
#: TLS 1.3 (the rest is :meth:`Relay._after_handshake`'s); plaintext read
#: after the handshake, followed by something to read again here (the
#: client's close_notify, an error).
(
    LEFT_CLIENT_DATA,
    LEFT_CLIENT_LOST,
    LEFT_CLIENT_ENDED,
    LEFT_READ_FAILED,
    LEFT_UPSTREAM_LOST,
    LEFT_UPSTREAM_SHORT,
    LEFT_UPSTREAM_ENDED,
    LEFT_CLIENT_SHORT,
    LEFT_BOTH_ENDED,
    LEFT_HANDSHAKE_FAILED,
    LEFT_HANDSHAKEN,
    LEFT_CLIENT_PLAINTEXT,
) = range(12)


@implementer(IPollHandler)
class Relay(UpstreamSide):
    """
    A client whose ClientHello is already read (peeked) and accepted for
    the fast path, and later its upstream.

    :param tls13: the ClientHello offers TLS 1.3 (only then may the session
        be the standard library's: ``ContextBuilder.session_for``).
    :ivar alpn_allowed: the route's ALPN protocols, read by the context's
        ALPN select callback through the connection's app data.
    :ivar received_from_client: plaintext bytes from the client (not
        counting what the compiled steady state relayed since it last
        handed the relay back: :meth:`relayed` counts all).
    :ivar received_from_upstream: bytes from the upstream (the same).
    """

    def __init__(
        self,
        engine: "LeanEngine",
        sock: socket.socket,
        addresses: "SocketAddresses",
        server_name: str | None,
        certified: Any,
        fallback: bool,
        route: Route,
        upstreams: list[tuple[int, tuple]],
        limit: Any,
        handshake_deadline: Deadline | None,
        registered: bool = True,
        tls13: bool = True,
    ):
        self._engine = engine
        self._loop = engine.loop
        self._sock = sock
        self._cfd = sock.fileno()
        self._addresses = addresses
        self.server_name = server_name
        self._fallback = fallback
        self.route = route
        self._upstreams = upstreams
        self._limit = limit
        self.alpn_allowed = route.alpn_bytes
        self.received_from_client = 0
        self.received_from_upstream = 0
        #: The upstream's socket object; None for a descriptor the compiled
        #: module dialled until one is needed (:meth:`_upstream`).
        self._up: socket.socket | None = None
        self._up_family = 0
        self._ufd = -1
        self._connected = False
        self._handshake_done = False
        #: What a short ``send`` left, per destination (None: nothing).
        self._to_client: bytes | memoryview | None = None
        #: Records made at the end of a TLS 1.3 handshake (the session
        #: tickets), sent ahead of the next bytes to the client.
        self._held: bytes | None = None
        self._to_upstream: list[bytes] = []
        self._pending_size = 0
        self._upstream_backlog: bytes | memoryview | None = None
        self._client_eof: bool = False
        self._upstream_eof = False
        self._client_shut = False
        self._upstream_shut: bool = False
        self._closing = False
        self._done: bool = False
        # Record boundaries of the client's stream (kongacme.tls.records):
        # bytes still to come of the current record, a cut header, and the
        # whole records not read yet (None: unknown, read until WantRead).
        self._need = 0
        self._header = b""
        self._complete: int | None = None
        self._client_mask = EPOLLIN
        self._upstream_mask = 0
        #: The steady state (see :meth:`_rearm`): both sides read, nothing
        #: pending, held or ending, so an ``EPOLLIN`` alone takes the short
        #: path in :meth:`_read_client` and ``_read_upstream``.
        self._steady = False
        #: Bytes asked of the upstream per ``recv`` (grows for a download).
        self._upstream_read: int = READ_SIZE
        self._idle_timeout: float = engine.proxy_factory.idle_timeout
        self._seconds: Callable[[], float] = engine.reactor.seconds
        self._last_activity = 0.0
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._tls = engine.tls_factory.builder.session_for(certified, route.alpn_bytes, self, tls13)
        #: :mod:`kongacme.engine._steady` when it serves this relay's steady
        #: state (built, and a session whose writes are whole), else None.
        self._compiled: Any = self._loop.compiled if self._tls.whole_writes else None
        self._pair: Any = None
        # The hello's deadline, now this relay's (the handshake's end).
        self._deadline: Deadline | None = handshake_deadline
        if handshake_deadline is not None:
            handshake_deadline.redirect(self._handshake_timed_out)
        if registered:
            self._loop.replace(self._cfd, EPOLLIN, self)
        else:
            self._loop.register(self._cfd, EPOLLIN, self)

    # -- events ---------------------------------------------------------------

    def on_events(self, fd: int, events: int) -> None:
        if self._steady and events == EPOLLIN:
            if fd == self._cfd:
                self._read_client()
            else:
                self._read_upstream()
            # A read that left the steady state says so: look again.
            if not (self._steady or self._done):
                self._rearm()
            return
        if self._pair is not None and self._cfd in self._loop.steady:
            # An event the compiled steady state leaves here (a hang-up, an
            # error): what it did comes back first (_taken_back).
            self._serve_compiled(False)
        if fd == self._cfd:
            if events & EPOLLOUT and self._to_client is not None:
                self._flush_client()
            if events & (EPOLLIN | _GONE) and not self._done:
                if self._client_mask & EPOLLIN or events & EPOLLERR:
                    self._read_client()
                else:
                    self._client_mask = self._park(fd)
        elif fd == self._ufd:
            if not self._connected:
                self._connect_finished()
            else:
                if events & EPOLLOUT and self._upstream_backlog is not None:
                    self._flush_upstream()
                if events & (EPOLLIN | _GONE) and not self._done:
                    if self._upstream_mask & EPOLLIN or events & EPOLLERR:
                        self._read_upstream()
                    else:
                        self._upstream_mask = self._park(fd)
        if not self._done:
            self._rearm()

    def _rearm(self) -> None:
        """Watch what each side can do now (an ``epoll_ctl`` only on change)."""
        if self._closing:
            client = EPOLLIN if not self._client_eof else 0
        elif not self._handshake_done:
            client = EPOLLIN
        elif not self._connected:
            # Read on while connecting, into _to_upstream, up to a bound.
            client = EPOLLIN if not self._client_eof and self._pending_size < MAX_PENDING else 0
        else:
            # Read the client only while the upstream takes what it sends.
            client = EPOLLIN if not self._client_eof and self._upstream_backlog is None else 0
        if self._to_client is not None:
            client |= EPOLLOUT
        if client != self._client_mask:
            self._client_mask = self._watch(self._cfd, self._client_mask, client)
        if self._ufd >= 0:
            if not self._connected:
                upstream = EPOLLOUT
            else:
                upstream = EPOLLIN if not self._upstream_eof and self._to_client is None else 0
                if self._upstream_backlog is not None:
                    upstream |= EPOLLOUT
            if upstream != self._upstream_mask:
                self._upstream_mask = self._watch(self._ufd, self._upstream_mask, upstream)
        steady = (
            client == EPOLLIN
            and self._upstream_mask == EPOLLIN
            and self._connected
            and self._handshake_done
            and not self._closing
            # The compiled steady state sends the held tickets itself (Pair.held).
            and (self._held is None or self._compiled is not None)
            and self._complete == 0
            and not self._need
            and not self._header
        )
        if self._compiled is None:
            self._steady = steady
        else:
            self._serve_compiled(steady)
        if self._over():
            self._release()

    def _over(self) -> bool:
        """Both sides have ended and nothing is left to send either way: the relay is released."""
        return (
            self._client_eof
            and (self._upstream_eof or self._closing)
            and self._to_client is None
            and self._upstream_backlog is None
        )

    def _serve_compiled(self, steady: bool) -> None:
        """
        In the steady state, both sockets are the compiled dispatch's
        (``loop.steady``, :mod:`kongacme.engine._steady`) until it leaves
        it (:meth:`_left_steady`); out of it, they are not.
        """
        table = self._loop.steady
        if steady:
            if table.get(self._cfd) is None:
                pair = self._pair
                if pair is None or pair.ufd != self._ufd:
                    # Once per connection (or once more after a handshake
                    # pair that did not dial): the steady state needs the
                    # upstream connected, which is never replaced.
                    if pair is not None:
                        self._fold()
                        if pair.held is not None and self._held is None:
                            self._held = pair.held  # not sent yet: the new pair holds them
                        pair.close()
                    tls = self._tls
                    pair = self._pair = self._compiled.Pair(
                        self, self._cfd, self._ufd, tls.feed, tls.read, tls.write, tls.take, self._seconds, tls
                    )
                pair.upstream_read = self._upstream_read
                if self._held is not None:
                    pair.held, self._held = self._held, None
                table[self._cfd] = table[self._ufd] = pair
        elif self._cfd in table:
            del table[self._cfd]
            table.pop(self._ufd, None)
            self._taken_back()

    def _taken_back(self) -> None:
        """The compiled steady state no longer serves this relay: what it kept comes back here."""
        pair = self._pair
        self._fold()
        self._upstream_read = pair.upstream_read
        if pair.client_ended and not self._client_eof:
            # The client's close_notify, passed on there: the upstream's
            # write side is shut, the client's descriptor watched for nothing.
            self._client_eof = self._upstream_shut = True
            self._client_mask = 0

    def _fold(self) -> None:
        """Add what the compiled steady state relayed, and when, to this relay's counters."""
        pair = self._pair
        if pair is not None:
            from_client, from_upstream, last = pair.take()
            if from_client or from_upstream:
                self.received_from_client += from_client
                self.received_from_upstream += from_upstream
                if last > self._last_activity:
                    self._last_activity = last

    def relayed(self) -> tuple[int, int]:
        """Plaintext bytes from the client and bytes from the upstream so far."""
        self._fold()
        return self.received_from_client, self.received_from_upstream

    def upstream_read_size(self) -> int:
        """Bytes asked of the upstream per ``recv`` now (the compiled steady state keeps its own while it serves)."""
        if self._compiled is not None and self.in_steady_state():
            return int(self._pair.upstream_read)
        return self._upstream_read

    def in_steady_state(self) -> bool:
        """Whether the steady state's short path serves this relay now (Python's or the compiled one)."""
        if self._compiled is None:
            return self._steady
        return self._handshake_done and self._pair is not None and self._loop.steady.get(self._cfd) is self._pair

    def handshake_compiled(self) -> bool:
        """Whether the compiled module does this relay's handshake now (:meth:`_serve_handshake`)."""
        return (
            not self._handshake_done
            and self._pair is not None
            and self._pair.ufd < 0
            and self._loop.steady.get(self._cfd) is self._pair
        )

    def _left_steady(self, what: int, arg: Any, sent: int) -> None:
        """
        The compiled steady state met an event it leaves to Python (``what``,
        one of the ``LEFT_*`` codes, with what it read or the error): it is
        done here as ``_read_client`` / ``_read_upstream`` do it outside the
        steady state, and the state is worked out again.
        """
        self._taken_back()
        if what == LEFT_BOTH_ENDED:
            # Both ends done there (the most common way here): released at
            # once, or waiting for the client to take the rest of our close_notify.
            self._upstream_eof = True
            if arg is None:
                self._release()
                return
            self._drop_upstream()
            self._to_client = memoryview(arg)[sent:]
        elif what == LEFT_CLIENT_DATA:
            self._client_data(arg)
        elif what == LEFT_CLIENT_LOST:
            self._client_lost(arg)
        elif what == LEFT_CLIENT_ENDED:
            self._client_ended()
        elif what == LEFT_READ_FAILED:
            self._read_failed(arg)
        elif what == LEFT_UPSTREAM_LOST:
            self._upstream_lost(arg)
        elif what == LEFT_UPSTREAM_SHORT:
            self._upstream_backlog = memoryview(arg)[sent:]
        elif what == LEFT_UPSTREAM_ENDED:
            self._upstream_ended()
        elif what == LEFT_CLIENT_SHORT:
            self._to_client = memoryview(arg)[sent:]
            self._drain()
        elif what == LEFT_HANDSHAKE_FAILED:
            self._handshake_failed(Failure(arg, type(arg), arg.__traceback__))
        elif what == LEFT_HANDSHAKEN:
            self._after_handshake()
        elif what == LEFT_CLIENT_PLAINTEXT:
            self._complete = None  # read on to what ended it
            self.received_from_client += len(arg)
            self._last_activity = self._seconds()
            self._send_upstream(arg)
            self._read_plaintext()
        else:
            raise ValueError("unknown departure from the steady state: %r" % (what,))
        if not self._done:
            self._rearm()

    def _watch(self, fd: int, watched: int, wanted: int) -> int:
        """Watch ``wanted`` on ``fd`` instead of ``watched`` (:data:`_PARKED`: not in the epoll); what is watched now."""
        if watched == _PARKED:
            if not wanted:
                return _PARKED  # nothing to wait for yet: stay out
            self._loop.register(fd, wanted, self)
        else:
            self._loop.modify(fd, wanted)
        return wanted

    def _park(self, fd: int) -> int:
        """
        Take ``fd`` out of the epoll until it is to be read again (its
        mask back in :meth:`_watch`). For an ``EPOLLHUP`` while flow control
        holds the socket: both directions of it are shut, and a hang-up
        cannot be masked, so it would be reported on every poll.
        """
        self._loop.unregister(fd)
        self._engine.parked.add(self)  # found by LeanEngine.stop() all the same
        return _PARKED

    # -- the client -------------------------------------------------------------

    def start(self, first: bytes) -> None:
        """Feed the ClientHello (read just now) and run the first handshake step."""
        _, self._need, self._header = count_records(0, b"", first)
        self._tls.feed(first)
        self._handshake()
        if not self._done:
            self._rearm()
            if type(self._tls) is NATIVE_SESSION and self._compiled is not None:
                self._serve_handshake()

    def _serve_handshake(self) -> None:
        """
        The rest of the handshake in the compiled module, for the own
        binding's session (kongacme/engine/_steady.c): the client's next
        flights fed, the server's sent, and once it is done (TLS 1.3) the
        tickets held, the route's first address dialled and the relay told
        (:meth:`_established`); whatever else it meets comes back through
        :meth:`_left_steady`. Not with a PROXY header to write first, an
        address with a scope, or anything pending.
        """
        if (
            self._handshake_done
            or self._to_client is not None
            or self._need
            or self._header
            or self._client_eof
            or self.route.proxy_protocol is not None
        ):
            return
        family, address = self._upstreams[0]
        if len(address) != 2:
            return
        tls = self._tls
        pair = self._pair = self._compiled.Pair(
            self, self._cfd, -1, tls.feed, tls.read, tls.write, tls.take, self._seconds, tls,
            (family, address[0], address[1]),
        )
        self._loop.steady[self._cfd] = pair

    def _established(self, ufd: int, code: int) -> None:
        """
        The compiled handshake step did the TLS 1.3 handshake (the tickets
        held in the pair) and dialled the route's first address: ``ufd``
        connected (``code`` 0: the pair serves both sockets from here, and
        relays what came with the client's Finished next), still connecting
        (``EINPROGRESS``), or -1 (``code``: connect's errno). As
        :meth:`_after_handshake` with :meth:`_dial`.
        """
        family, _ = self._upstreams.pop(0)
        if ufd >= 0:
            # No socket object yet (one more system call, and most
            # connections never need it): _upstream() makes it.
            self._ufd = ufd
            self._up_family = family
        self._handshake_completed()
        if code == 0:
            self._complete = 0  # the pair reads what is there next
            self._dialled(True)
            return
        if ufd >= 0:
            self._dialled(False)
        else:
            self._connect_failed(code)
        if not self._done:
            self._read_plaintext()
            if not self._done:
                self._rearm()

    def _read_client(self) -> None:
        """
        The client is readable. In the steady state the usual segment, one
        whole record of application data, goes upstream here with none of
        the general path's checks (each of them holds in the steady state:
        connected, nothing pending, no record cut); anything else — a FIN,
        a cut or several records, a close_notify, an error, a short
        ``send``, any segment outside the steady state — goes the general
        way and leaves the steady state (``_steady`` false), so that
        ``on_events`` looks again (:meth:`_rearm`).
        """
        try:
            data = self._sock.recv(READ_SIZE)
        except BlockingIOError:
            return
        except OSError as e:
            self._client_lost(e)
            self._steady = False
            return
        size = len(data)
        if not self._steady or size <= 5 or size != 5 + (data[3] << 8 | data[4]):
            self._client_data(data)
            self._steady = False
            return
        tls = self._tls
        tls.feed(data)
        try:
            # A record's plaintext is shorter than the record: asking for
            # no more than that is a small allocation, not PLAIN_SIZE's
            # 32 KiB shrunk to what came.
            plain = tls.read(size)
        except WANT_READ:
            return  # a record with no application data in it (a KeyUpdate)
        except CLOSED:
            self._client_ended()
            self._steady = False
            return
        except TLS_ERROR as e:
            self._read_failed(e)
            self._steady = False
            return
        if not plain:
            self._client_ended()
            self._steady = False
            return
        size = len(plain)
        self.received_from_client += size
        self._last_activity = self._seconds()
        try:
            sent = (self._up or self._upstream()).send(plain)
        except BlockingIOError:
            sent = 0
        except OSError as e:
            self._upstream_lost(e)
            self._steady = False
            return
        if sent < size:
            self._upstream_backlog = memoryview(plain)[sent:]
            self._steady = False

    def _client_data(self, data: bytes) -> None:
        """What one ``recv`` from the client gave (``b""``: its FIN)."""
        tls = self._tls
        if not data:
            # A TCP FIN: end of stream for OpenSSL (the context ignores a
            # missing close_notify), a half-close once the handshake is done.
            tls.feed_eof()
            if not self._handshake_done:
                self._handshake()
                if not self._done and not self._handshake_done:
                    self._handshake_failed(Failure(Error([("", "", "unexpected eof while reading")])))
                return
            self._complete = None  # read to the end of what is there
            self._read_plaintext()
            if not self._client_eof:
                self._client_ended()
            return
        size = len(data)
        if not self._need and not self._header and size > 5 and size == 5 + (data[3] << 8 | data[4]):
            # The common case: the segment is one whole record.
            if self._complete is not None:
                self._complete += 1
        else:
            complete, self._need, self._header = count_records(self._need, self._header, data)
            if self._complete is not None:
                self._complete += complete
        tls.feed(data)
        if self._handshake_done:
            self._read_plaintext()
        else:
            self._handshake()

    def _handshake(self) -> None:
        tls = self._tls
        try:
            tls.do_handshake()
        except WANT_READ:
            self._drain()
            return
        except TLS_ERROR:
            self._handshake_failed(Failure())
            return
        self._after_handshake()

    def _handshake_completed(self) -> None:
        self._handshake_done = True
        self._cancel_deadline()
        self._engine.tls_factory.handshakes["fallback" if self._fallback else "cached"] += 1

    def _after_handshake(self) -> None:
        """The handshake is done: the server's last records, the upstream dialled, what came with the Finished."""
        self._handshake_completed()
        if self._tls.is_tls13():
            self._hold()
        else:
            self._drain()  # TLS 1.2: the server's Finished, which the client waits for
        if self._done:
            return
        self._dial()
        # Application data that came with the Finished waits for the upstream.
        self._read_plaintext()

    def _read_plaintext(self) -> None:
        read = self._tls.read
        while not self._client_eof and not self._done and self._complete != 0:
            try:
                data = read(PLAIN_SIZE)
            except WANT_READ:
                # No whole record left: from here on, count them.
                self._complete = 0
                return
            except CLOSED:
                self._client_ended()
                return
            except TLS_ERROR as e:
                self._read_failed(e)
                return
            if not data:  # the standard library's close_notify (or FIN)
                self._client_ended()
                return
            if self._complete:
                self._complete -= 1
            self.received_from_client += len(data)
            self._last_activity = self._seconds()
            if not self._closing:
                self._send_upstream(data)

    def _read_failed(self, error: Exception) -> None:
        """``read`` failed: an unexpected EOF ends the client's side, anything else loses it."""
        if represents_eof(error):
            self._client_ended()
        else:
            self._client_lost(error)

    def _client_ended(self) -> None:
        """close_notify or a FIN: pass the half-close on upstream once its data is sent."""
        self._client_eof = True
        if self._closing:
            return
        if self._connected and self._upstream_backlog is None:
            self._shut_upstream()

    def _client_lost(self, error: Exception) -> None:
        """The client's socket failed (a reset): the upstream gets a FIN, as on the Twisted path."""
        if not self._handshake_done:
            self._handshake_failed(Failure(error))
            return
        self._release()

    def _drain(self, flags: int = 0) -> None:
        """Send what OpenSSL has produced to the client (``flags``: of each ``send``)."""
        take = self._tls.take
        while True:
            data = take(DRAIN_SIZE)
            if not data:
                return
            self._send_client(data, flags)
            if len(data) < DRAIN_SIZE:
                return

    def _hold(self) -> None:
        """
        Keep what OpenSSL wrote as a TLS 1.3 handshake ended — its session
        tickets, which a server may send at any time after the client's
        Finished (RFC 8446 §4.6.1) and which no client waits for — to go out
        in the same ``send`` as the first records to the client (the
        response, or close_notify) instead of one of their own: one system
        call and one TCP segment fewer per connection.
        """
        data = self._tls.take(DRAIN_SIZE)
        if not data:
            return
        if len(data) == DRAIN_SIZE:  # not tickets alone: no reason to wait
            self._send_client(data)
            self._drain()
            return
        self._held = data

    def _send_client(self, data: bytes | memoryview, flags: int = 0) -> None:
        held = self._held
        if held is not None:
            self._held = None
            data = held + data
        elif self._pair is not None and self._pair.held is not None:
            # Held by the compiled steady state (_serve_compiled) and not
            # sent there yet: they still go first (their record numbers
            # come before these records').
            data = self._pair.held + data
            self._pair.held = None
        if self._to_client is not None:
            self._to_client = bytes(self._to_client) + bytes(data)
            return
        try:
            sent = send_now(self._sock, data, flags)
        except OSError as e:
            self._client_lost(e)
            return
        if sent < len(data):
            self._to_client = memoryview(data)[sent:]

    def _flush_client(self) -> None:
        pending = self._to_client
        assert pending is not None
        self._to_client = None
        self._send_client(pending)
        if self._to_client is None and self._upstream_eof and not self._client_shut and not self._done:
            self._shut_client()

    def _shut_client(self) -> None:
        self._client_shut = True
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def _send_close_notify(self) -> None:
        self._tls.close_notify()
        # The FIN follows at once: with MSG_MORE the kernel holds the
        # close_notify back for it, and both go in one segment. (Were the
        # send cut short, what is left goes, without MSG_MORE, on EPOLLOUT.)
        self._drain(MSG_MORE)
        if self._to_client is None and not self._client_shut and not self._done:
            if self._over():
                # The relay is released at once (_rearm), and closing the
                # socket sends the FIN after what MSG_MORE held, as shutdown
                # would: one system call fewer.
                return
            self._shut_client()

    def _handshake_failed(self, reason: Failure) -> None:
        self._engine.tls_factory.handshakes["failed"] += 1
        log.info(
            "TLS: handshake with {peer} for {server_name} failed: {reason}",
            peer=peer_name(self._addresses),
            server_name=self.server_name,
            reason=describe_tls_failure(reason),
        )
        # OpenSSL's alert, if it made one, then close.
        self._to_client = None
        try:
            self._drain()
        except TLS_ERROR:
            pass
        self._release()

    def _handshake_timed_out(self) -> None:
        self._deadline = None
        if self._done or self._handshake_done:
            return
        log.info("TLS: handshake with {peer} timed out", peer=peer_name(self._addresses))
        self._engine.tls_factory.handshakes["timeout"] += 1
        self._abort()

    # -- deadlines and the end ----------------------------------------------------

    def _check_idle(self) -> None:
        self._deadline = None
        if self._done:
            return
        self._fold()
        idle_for = self._seconds() - self._last_activity
        if idle_for < self._idle_timeout:
            self._deadline = self._engine.proxy_factory.wheel.call_later(self._idle_timeout - idle_for, self._check_idle)
            return
        log.info(
            "closing connection from {peer} for {server_name}: idle for {seconds} seconds",
            peer=peer_name(self._addresses),
            server_name=self.server_name,
            seconds=self._idle_timeout,
        )
        self._abort()

    def _close(self) -> None:
        """
        The upstream is gone or never came: close it, send the client
        close_notify and a FIN, and read on (at most ``handshake_timeout``)
        until the client ends its side, so a client still sending gets no
        reset that could destroy the close_notify.
        """
        if self._closing or self._done:
            return
        self._closing = True
        self._steady = False
        self._upstream_eof = True
        self._upstream_backlog = None
        self._drop_upstream()
        self._cancel_deadline()
        self._deadline = self._engine.tls_factory.wheel.call_later(
            self._engine.tls_factory.handshake_timeout, self._abort
        )
        self._send_close_notify()
        if not self._done:
            self._rearm()

    def _drop_upstream(self) -> None:
        up, self._up = self._up, None
        ufd, self._ufd = self._ufd, -1
        if ufd >= 0:
            self._loop.forget(ufd)  # ours alone: closing unregisters it
            if up is not None:
                up.close()
            else:
                os.close(ufd)

    def abort(self) -> None:
        """Drop both sides now (an unexpected error)."""
        self._abort()

    def _abort(self) -> None:
        """Reset both sides (as Twisted's ``abortConnection``): buffered data is dropped."""
        for sock in (self._sock, self._upstream() if self._ufd >= 0 else None):
            if sock is not None:
                reset_on_close(sock)
        self._release()

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _release(self) -> None:
        """Close both sockets and give back what the connection held; once."""
        if self._done:
            return
        self._done = True
        self._steady = False
        self._cancel_deadline()
        self._drop_upstream()
        self._engine.parked.discard(self)
        self._loop.forget(self._cfd)
        self._sock.close()
        if self._pair is not None:
            self._fold()
            self._pair.close()  # its references to this relay and the session
            self._pair = None
        self._tls.release()
        engine = self._engine
        engine.finished(self.received_from_client, self.received_from_upstream)
        if self._limit is not None:
            self._limit.release()
