"""
Tests for kongacme.engine.relay (through the lean engine that runs it),
driven without the running reactor: the engine gets a fake reactor whose
time is a ``Clock`` that is never moved on (so no deadline fires), and the
test calls ``EventLoop.doRead`` itself, single-threaded, between the steps
of a real TCP client (TLS on ``ssl.SSLObject`` over memory BIOs, so the
test chooses how its ciphertext is cut into ``send`` calls) and a real
upstream socket the test reads and writes directly. That lets hypothesis
choose how the bytes are cut and in which order the two sides end.
"""

from __future__ import annotations

import collections
import contextlib
import os
import random
import select
import socket
import ssl
from typing import Any, Callable, Iterator, Sequence

import attrs

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import tcp
from twisted.internet.interfaces import IReactorFDSet, IReactorTime
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from kongacme.connlimit import Budget, ConnectionLimiter
from kongacme.engine.lean import LeanEngine
from kongacme.engine.loop import COMPILED
from kongacme.engine.relay import MAX_PENDING, Relay
from kongacme.engine.sockets import BULK_READ_SIZE, READ_SIZE, reset_on_close
from kongacme.proxy.routes import Route, RouteTable
from kongacme.testing import TestCA
from kongacme.tls.cache import CertificateCache
from kongacme.tls.context import ContextBuilder
from tests.tlsbinding import use_binding
from kongacme.tls.fallback import generate_self_signed
from kongacme.tls.protocol import TLSServerFactory
from kongacme.tls.records import count_records
from kongacme.workers.worker import CountingProxyFactory
from tests.proxyhelpers import LogCapture
from tests.test_tls_pump import segments
from tests.tlsclients import bare_eof, client_context, memory_client

SERVER_NAME = "app.example.com"

_CA = TestCA.create()
_CERT = _CA.issue([SERVER_NAME])
_FALLBACK = generate_self_signed()

#: Rounds of polling before a wait is declared stuck; each round waits at
#: most :data:`WAIT` seconds for a descriptor to become ready, so a stuck
#: wait fails within seconds instead of hanging.
ROUNDS = 1000
WAIT = 0.005


@implementer(IReactorTime, IReactorFDSet)
class FakeReactor:
    """
    The reactor the engine is given: time from a ``Clock`` (never moved
    past now by these tests), readers recorded but never polled (the test
    polls the engine's loop itself), and connections the engine hands to
    the Twisted path recorded, not adopted: no test here expects one.
    """

    def __init__(self) -> None:
        self.clock = Clock()
        self.readers: list[Any] = []
        self.adopted: list[int] = []

    def seconds(self) -> float:
        return self.clock.seconds()

    def callLater(self, delay: float, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return self.clock.callLater(delay, call, *args, **kwargs)

    def getDelayedCalls(self) -> Sequence[Any]:
        return self.clock.getDelayedCalls()

    def addReader(self, reader: Any) -> None:
        self.readers.append(reader)

    def removeReader(self, reader: Any) -> None:
        if reader in self.readers:  # as the reactor: removing twice is no error
            self.readers.remove(reader)

    def addWriter(self, writer: Any) -> None:
        raise AssertionError("the engine never writes through the reactor")

    def removeWriter(self, writer: Any) -> None:
        """Nothing to remove (a closing Twisted port asks)."""

    def removeAll(self) -> list[Any]:
        readers, self.readers = self.readers, []
        return readers

    def getReaders(self) -> list[Any]:
        return list(self.readers)

    def getWriters(self) -> list[Any]:
        return []

    def adoptStreamConnection(self, fd: int, family: int, factory: Any) -> None:
        """Record a hand-over (the engine closes its descriptor after this)."""
        self.adopted.append(fd)


def open_descriptors() -> set[str]:
    """The file descriptors this process has open now."""
    return set(os.listdir("/proc/self/fd"))


class End:
    """
    One end the test holds of a proxied connection: a non-blocking socket,
    what was read from it and how it ended.

    :ivar eof: a TCP FIN was read.
    :ivar reset: a ``recv`` failed with a reset.
    :ivar closed: the test closed the socket.
    :ivar reading: the test reads what arrives (else it stays in the socket).
    """

    def __init__(self, sock: socket.socket):
        sock.setblocking(False)
        # Each send its own segment, now: Nagle would hold a small one back
        # (behind a delayed ACK) and merge it with the next.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self.received = bytearray()
        self.eof = False
        self.reset = False
        self.closed = False
        self.reading = True

    def pending(self) -> bool:
        """Whether the socket may still have something to read."""
        return not (self.closed or self.eof or self.reset)

    def read_socket(self) -> bytes:
        """Everything the socket has now (notes the FIN or the reset)."""
        data = bytearray()
        while self.reading and self.pending():
            try:
                chunk = self.sock.recv(65536)
            except BlockingIOError:
                break
            except ConnectionResetError:
                self.reset = True
                break
            if not chunk:
                self.eof = True
                break
            data += chunk
        return bytes(data)

    def pump(self) -> None:
        """Read what has arrived."""
        self.received += self.read_socket()

    def fin(self) -> None:
        """Half-close: a TCP FIN, reading goes on (nothing if the peer is gone already)."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def rst(self) -> None:
        """Close with a TCP reset (``SO_LINGER`` 0)."""
        reset_on_close(self.sock)
        self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.sock.close()


class Client(End):
    """
    A TLS client on ``ssl.SSLObject`` over memory BIOs: its ciphertext
    leaves only when the test sends it (:meth:`Harness.send`), cut as the
    test likes.

    :ivar close_notify: the server's close_notify was read.
    :ivar eof_without_close_notify: a TCP FIN came with no close_notify before it.
    """

    def __init__(self, sock: socket.socket):
        super().__init__(sock)
        self.tls, self.incoming, self.outgoing = memory_client(SERVER_NAME)
        self.handshake_done = False
        self.close_notify = False
        self.eof_without_close_notify = False

    def pump(self) -> None:
        data = self.read_socket()
        if data:
            self.incoming.write(data)
        if self.eof:
            self.incoming.write_eof()
        if not self.handshake_done:
            return
        while not (self.close_notify or self.eof_without_close_notify):
            try:
                chunk = self.tls.read(65536)
            except ssl.SSLWantReadError:
                return
            except ssl.SSLZeroReturnError:
                chunk = b""
            except ssl.SSLError as e:
                if not bare_eof(e):
                    raise
                self.eof_without_close_notify = True
                return
            if not chunk:
                self.close_notify = True
                return
            self.received += chunk

    def handshake_step(self) -> bytes:
        """Run the handshake as far as it goes; the ciphertext to send."""
        try:
            self.tls.do_handshake()
            self.handshake_done = True
        except ssl.SSLWantReadError:
            pass
        return self.outgoing.read()

    def encrypt(self, data: bytes) -> bytes:
        """``data`` as TLS records."""
        if data:
            self.tls.write(data)
        return self.outgoing.read()

    def close_notify_record(self) -> bytes:
        """The client's close_notify alert."""
        try:
            self.tls.unwrap()
        except ssl.SSLError:
            pass  # it does not wait for the server's
        return self.outgoing.read()


def segments_in(sock: socket.socket) -> int:
    """TCP segments ``sock`` has received (Linux ``tcp_info.tcpi_segs_in``)."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    return int.from_bytes(info[140:144], "little")


@attrs.frozen
class Snapshot:
    """What the process and the engine held before a connection."""

    descriptors: set[str]
    served: int
    relayed: collections.Counter


class Harness:
    """
    One lean engine on a fake reactor, its TLS port, and an upstream
    listening socket it routes every name to; shared by the examples of a
    test (so what one example leaves behind fails the next).
    """

    def __init__(self, binding: str = "pyopenssl", compiled: Any = COMPILED) -> None:
        self.reactor = FakeReactor()
        cache = CertificateCache(_FALLBACK)
        cache.put(_CERT)
        self.upstream_listener = socket.socket()
        self.upstream_listener.bind(("127.0.0.1", 0))
        self.upstream_listener.listen(8)
        self.upstream_listener.setblocking(False)
        up_port = self.upstream_listener.getsockname()[1]
        self.proxy_factory = CountingProxyFactory(
            RouteTable([], Route("127.0.0.1", up_port)), self.reactor, direct_connect=True
        )
        builder = ContextBuilder(self.reactor)
        use_binding(builder, binding)
        self.tls_factory = TLSServerFactory(
            cache, builder, self.proxy_factory, self.reactor,
            alpn_for=self.proxy_factory.alpn_for,
        )
        budget = Budget(1024, 64, 100, {"tls": 100, "http": 10, "admin": 10}, {"tls": 2, "http": 1, "admin": 1})
        self.limiter = ConnectionLimiter(self.reactor, budget)
        self.limit = self.limiter.listener("tls")
        serving = self.limit.wrap(self.tls_factory)
        self.twisted_port = tcp.Port(0, serving, interface="127.0.0.1", reactor=self.reactor)
        self.twisted_port.startListening()
        self.port = self.twisted_port.getHost().port
        self.engine = LeanEngine(self.reactor, self.tls_factory, self.proxy_factory, compiled=compiled)
        lean_port = self.engine.take("tcp:0", self.twisted_port, serving, self.limit)
        assert lean_port is not None, "the engine refused a plain TCP port"
        self.lean_port = lean_port
        self.limit.track(lean_port)
        self.ends: list[End] = []

    def close(self) -> None:
        """Drop what is left, stop listening, close every descriptor opened."""
        self.drop_connections()
        self.engine.stop()
        self.lean_port.stopListening()
        self.reactor.clock.advance(0)  # the Twisted port closes its socket
        # The limiter and its listeners refer to each other: untracked, the
        # port (and through it the engine and its epoll) goes without a GC.
        self.limit.untrack(self.lean_port)
        self.limiter.stop()
        self.upstream_listener.close()

    # -- running the engine ---------------------------------------------------

    def run_ready(self) -> None:
        """Dispatch the engine's ready events, and let both ends read, until nothing is ready."""
        loop = self.engine.loop
        for _ in range(ROUNDS):
            self.reactor.clock.advance(0)  # calls due now (the limiter's clamp)
            for end in self.ends:
                end.pump()
            if not select.select([loop], [], [], 0)[0]:
                return
            loop.doRead()
            if self.reactor.adopted:
                raise AssertionError("the engine handed a connection to the Twisted path")
        raise AssertionError("the engine's loop never went quiet")

    def spin(self, until: Callable[[], bool], what: str) -> None:
        """Run the engine and both ends until ``until()``; fail (never hang) if it does not come."""
        for _ in range(ROUNDS):
            self.run_ready()
            if until():
                return
            waiting: list[Any] = [self.engine.loop, self.upstream_listener]
            waiting += [end.sock for end in self.ends if end.reading and end.pending()]
            select.select(waiting, [], [], WAIT)
        raise AssertionError(f"stuck waiting for: {what}")

    def send(self, end: End, data: bytes, cuts: list[int]) -> None:
        """``data`` from ``end``, one ``send`` per segment, the engine run between them."""
        for piece in segments(data, cuts):
            view = memoryview(piece)
            while view:
                try:
                    view = view[end.sock.send(view):]
                except BlockingIOError:
                    self.spin(lambda: bool(select.select([], [end.sock], [], 0)[1]), "room to send")
            self.run_ready()

    # -- one connection ---------------------------------------------------------

    def handshake(self, hello_cuts: list[int]) -> tuple[Client, bytes]:
        """
        A client through the handshake on its side: its ClientHello sent
        (cut at ``hello_cuts``), the server's flight read; its last flight
        is returned, not sent.
        """
        client = Client(socket.create_connection(("127.0.0.1", self.port)))
        self.ends.append(client)
        self.send(client, client.handshake_step(), hello_cuts)
        flight = b""
        for _ in range(ROUNDS):
            self.spin(lambda: client.incoming.pending > 0 or not client.pending(), "the server's flight")
            flight += client.handshake_step()
            if client.handshake_done:
                return client, flight
        raise AssertionError("the client's handshake never finished")

    def tls12_client(self) -> Client:
        """A client connected to the engine that offers TLS 1.2 at most (nothing sent yet)."""
        client = Client(socket.create_connection(("127.0.0.1", self.port)))
        context = client_context()
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        client.incoming, client.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        client.tls = context.wrap_bio(client.incoming, client.outgoing, server_hostname=SERVER_NAME)
        self.ends.append(client)
        return client

    def accept_upstream(self) -> End:
        """The connection the engine made upstream."""
        accepted: list[socket.socket] = []

        def accept() -> bool:
            try:
                accepted.append(self.upstream_listener.accept()[0])
            except BlockingIOError:
                return False
            return True

        self.spin(accept, "the engine's connection upstream")
        upstream = End(accepted[0])
        self.ends.append(upstream)
        return upstream

    def connect(self, hello_cuts: list[int], finished_cuts: list[int]) -> tuple[Client, End]:
        """A client through the handshake (its flights cut at the given offsets), and the upstream it reached."""
        client, flight = self.handshake(hello_cuts)
        self.send(client, flight, finished_cuts)
        return client, self.accept_upstream()

    def send_what_fits(self, end: End, data: bytes) -> int:
        """Send ``data`` from ``end`` until its socket takes no more (the engine run between sends); bytes sent."""
        view = memoryview(data)
        sent = 0
        while sent < len(view):
            try:
                sent += end.sock.send(view[sent : sent + 65536])
            except BlockingIOError:
                self.run_ready()
                try:
                    sent += end.sock.send(view[sent : sent + 65536])
                except BlockingIOError:
                    return sent
            self.run_ready()
        return sent

    @contextlib.contextmanager
    def connection(self) -> Iterator[Snapshot]:
        """
        The span of one connection: gives what was held before it; after
        it, whatever happened, the test's ends are closed and anything the
        engine still holds but its port is aborted (so one failing example
        does not fail the next).
        """
        before = Snapshot(open_descriptors(), self.engine.served, collections.Counter(self.proxy_factory.bytes))
        try:
            yield before
        finally:
            self.drop_connections()

    def relayed_since(self, before: Snapshot) -> tuple[int, int]:
        """Bytes from the client and from the upstream the engine counted since ``before``."""
        counted = collections.Counter(self.proxy_factory.bytes) - before.relayed
        return counted["from_clients"], counted["from_upstreams"]

    def relay(self) -> Relay:
        """The engine's one relay (of the one connection)."""
        relays = {h for h in self.engine.loop.handlers.values() if isinstance(h, Relay)}
        if len(relays) != 1:
            raise AssertionError("the engine holds %d relays, not one" % (len(relays),))
        return relays.pop()

    def drop_connections(self) -> None:
        """Close the test's ends; abort anything the engine still holds but its port."""
        for end in self.ends:
            end.close()
        self.ends = []
        for handler in list(dict.fromkeys(self.engine.loop.handlers.values())):
            if handler is not self.lean_port:
                handler.abort()

    def assert_clean_end(self, test: SynchronousTestCase, before: Snapshot) -> None:
        """
        The engine holds nothing of the connection: its loop has only the
        listening port, no deadline is pending, the limit is given back,
        and once the test's own ends are closed, so are every descriptor
        the connection took (both of the engine's sockets).
        """
        self.spin(lambda: self.engine.served == before.served + 1, "the connection to end")
        test.assertEqual(list(self.engine.loop.handlers.values()), [self.lean_port])
        test.assertEqual((self.engine.handed_over, self.reactor.adopted), (0, []))
        test.assertEqual(self.limit.in_use, 0)
        test.assertEqual((len(self.tls_factory.wheel), len(self.proxy_factory.wheel)), (0, 0))
        test.assertEqual(self.reactor.getDelayedCalls(), [])
        for end in self.ends:
            end.close()
        self.ends = []
        # New ones only: one closed meanwhile (a collected object's) is no leak.
        leaked = {}
        for fd in open_descriptors() - before.descriptors:
            try:
                leaked[fd] = os.readlink("/proc/self/fd/" + fd)
            except OSError:
                pass  # closed once listed: the listing's own, or another thread's (an earlier test's client)
        test.assertEqual(leaked, {})


class HarnessMixin:
    """
    A :class:`Harness` for each test, closed after it; the relay's log
    lines. ``binding``: the TLS binding of every connection's session;
    ``compiled``: the engine's compiled dispatch (None: Python's).
    """

    binding = "pyopenssl"
    compiled: Any = COMPILED

    def setUp(self) -> None:
        super().setUp()  # type: ignore[misc]
        self.relay_logs = LogCapture("kongacme.engine.relay").start(self)
        self.harness = Harness(self.binding, self.compiled)
        self.addCleanup(self.close_harness)  # type: ignore[attr-defined]

    def close_harness(self) -> None:
        self.harness.close()
        del self.harness  # trial keeps the test case: let the engine's epoll go now

    def exchange(self, client: Client, upstream: End, request: bytes, reply: bytes) -> None:
        """``request`` from the client reaches the upstream, then ``reply`` the client."""
        harness = self.harness
        harness.send(client, client.encrypt(request), [])
        harness.spin(lambda: bytes(upstream.received).endswith(request), "the request upstream")
        harness.send(upstream, reply, [])
        harness.spin(lambda: bytes(client.received).endswith(reply), "the reply at the client")

    def download_not_read_at_first(self, client: Client, upstream: End, relay: Relay, download: bytes) -> None:
        """
        ``download`` from the upstream while the client does not read: the
        records wait (``_to_client``) and the relay is out of the steady
        state; then the client reads, and all of it arrives.
        """
        harness = self.harness
        test: Any = self
        client.reading = False
        sent = harness.send_what_fits(upstream, download)
        for _ in range(5):
            harness.run_ready()
        test.assertIsNotNone(relay._to_client)
        test.assertFalse(relay.in_steady_state())
        client.reading = True
        harness.send(upstream, download[sent:], [])
        harness.spin(lambda: bytes(client.received).endswith(download), "the download")

    def end_both(self, client: Client, upstream: End) -> None:
        """The client's close_notify and FIN reach the upstream, then the upstream's FIN the client (with close_notify)."""
        harness = self.harness
        harness.send(client, client.close_notify_record(), [])
        client.fin()
        harness.spin(lambda: upstream.eof, "the client's half-close upstream")
        upstream.fin()
        harness.spin(lambda: client.eof, "the upstream's half-close at the client")
        test: Any = self
        test.assertEqual((client.close_notify, client.reset), (True, False))


def sized_bytes(max_size: int) -> st.SearchStrategy[bytes]:
    """
    Bytes of any length up to ``max_size``, evenly spread (``st.binary``
    keeps to short ones): a length and a seed hypothesis can shrink.
    """
    return st.builds(lambda size, seed: random.Random(seed).randbytes(size), st.integers(0, max_size), st.integers(0, 2**16))


#: The property tests run once per TLS binding (the *StdlibTests classes at
#: the end): the same test method from two classes, which hypothesis would
#: otherwise flag.
ONE_TEST_TWO_BINDINGS = [HealthCheck.differing_executors]

cut_lists = st.lists(st.integers(min_value=0, max_value=60000), max_size=10)
hello_cut_lists = st.lists(st.integers(min_value=0, max_value=2000), max_size=8)


class SplitPropertyTests(HarnessMixin, SynchronousTestCase):
    """
    Tests for the relay's byte stream, however the client's ciphertext and
    the upstream's bytes are cut into segments.
    """

    @settings(max_examples=200, deadline=None, suppress_health_check=ONE_TEST_TWO_BINDINGS)
    @given(
        payload=sized_bytes(40000),
        reply=sized_bytes(40000),
        hello_cuts=hello_cut_lists,
        finished_cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=4),
        payload_cuts=cut_lists,
        reply_cuts=cut_lists,
    )
    def test_any_split(self, payload, reply, hello_cuts, finished_cuts, payload_cuts, reply_cuts) -> None:
        """
        However the client's ciphertext (ClientHello, its second flight
        and its application data records) and the upstream's reply are cut
        into sends, the upstream receives exactly the client's plaintext
        and the client exactly the upstream's reply; a close_notify and FIN
        from the client, then a FIN from the upstream, end it cleanly.
        """
        harness = self.harness
        with harness.connection() as start:
            client, upstream = harness.connect(hello_cuts, finished_cuts)
            harness.send(client, client.encrypt(payload), payload_cuts)
            harness.spin(lambda: len(upstream.received) >= len(payload), "the payload upstream")
            self.assertEqual(bytes(upstream.received), payload)
            harness.send(upstream, reply, reply_cuts)
            harness.spin(lambda: len(client.received) >= len(reply), "the reply at the client")
            self.assertEqual(bytes(client.received), reply)
            harness.send(client, client.close_notify_record(), [])
            client.fin()
            harness.spin(lambda: upstream.eof, "the client's half-close upstream")
            upstream.fin()
            harness.spin(lambda: client.eof, "the upstream's half-close at the client")
            self.assertTrue(client.close_notify)
            self.assertEqual((client.reset, upstream.reset), (False, False))
            self.assertEqual(bytes(upstream.received), payload)
            self.assertEqual(bytes(client.received), reply)
            harness.assert_clean_end(self, start)
            self.assertEqual(harness.relayed_since(start), (len(payload), len(reply)))


#: How the client ends: "cut+fin" is the first bytes of a record (never
#: whole, so never decrypted) and then a FIN.
CLIENT_ENDS = ("close_notify", "close_notify+fin", "fin", "cut+fin", "rst")
UPSTREAM_ENDS = ("fin", "rst")


class EndingPropertyTests(HarnessMixin, SynchronousTestCase):
    """
    Tests for the relay's ends: close_notify, FIN or reset from the client,
    FIN or reset from the upstream, in either order, before or after the
    other side's data.
    """

    def end_client(self, client: Client, how: str, cuts: list[int]) -> None:
        if how.startswith("close_notify"):
            self.harness.send(client, client.close_notify_record(), cuts)
        if how.startswith("cut"):
            record = client.encrypt(b"never whole")
            self.harness.send(client, record[: max(1, sum(cuts) % len(record))], [])
        if how.endswith("fin"):
            client.fin()
        if how == "rst":
            client.rst()

    def end_upstream(self, upstream: End, how: str) -> None:
        if how == "fin":
            upstream.fin()
        else:
            upstream.rst()

    @settings(max_examples=400, deadline=None, suppress_health_check=ONE_TEST_TWO_BINDINGS)
    @given(
        client_end=st.sampled_from(CLIENT_ENDS),
        upstream_end=st.sampled_from(UPSTREAM_ENDS),
        client_first=st.booleans(),
        settle=st.booleans(),
        before=sized_bytes(20000),
        reply=sized_bytes(20000),
        after=sized_bytes(20000),
        cuts=cut_lists,
    )
    def test_any_order_of_endings(
        self, client_end, upstream_end, client_first, settle, before, reply, after, cuts
    ) -> None:
        """
        The client sends ``before``, the upstream ``reply``; one side ends
        (client: close_notify, close_notify and FIN, FIN alone, FIN in the
        middle of a record, reset; upstream: FIN, reset), the other sends ``after`` if it still has
        someone to send to, then ends too. With ``settle``, each step waits
        until what was sent has arrived; without, the next step follows at
        once.

        Without a reset: a half-close is passed on (the client's
        close_notify or FIN is a FIN upstream, RFC 8446 section 6.1, and a
        record the FIN cut is dropped whole; the
        upstream's FIN is close_notify then a FIN at the client, and the
        client sees close_notify before the FIN in every order), every byte
        sent arrives, and the engine counts exactly those bytes.

        With a reset (``SO_LINGER`` 0), what is asserted: every byte sent
        before it arrived if the step waited (``settle``); without, the
        other side has a prefix of what was sent (the reset may overtake
        and destroy the rest). A client's reset reaches the upstream as a
        FIN (a reset only without ``settle``: Linux resets a socket closed
        with unread bytes, and the upstream's may still be in the engine's
        socket); an upstream's reset reaches the client as close_notify
        then a FIN, and what the client sends after it is read and dropped.

        In every order the engine ends holding nothing
        (:meth:`Harness.assert_clean_end`).
        """
        harness = self.harness
        with harness.connection() as start:
            client, upstream = harness.connect(cuts, cuts)
            harness.send(client, client.encrypt(before), cuts)
            harness.send(upstream, reply, cuts)
            if settle:
                harness.spin(
                    lambda: len(upstream.received) >= len(before) and len(client.received) >= len(reply),
                    "the data before the ends",
                )
            if client_first:
                self.end_client(client, client_end, cuts)
                harness.spin(lambda: not upstream.pending(), "the client's end upstream")
                from_client, from_upstream = before, reply
                if client_end != "rst":
                    harness.send(upstream, after, cuts)
                    from_upstream += after
                    if settle:
                        harness.spin(lambda: len(client.received) >= len(from_upstream), "the data after")
                self.end_upstream(upstream, upstream_end)
            else:
                self.end_upstream(upstream, upstream_end)
                harness.spin(lambda: client.close_notify or not client.pending(), "the upstream's end at the client")
                # FIN or reset, the client learns of it by close_notify first.
                self.assertEqual((client.close_notify, client.eof_without_close_notify), (True, False))
                harness.send(client, client.encrypt(after), cuts)
                from_client, from_upstream = before, reply
                if upstream_end == "fin":
                    from_client += after
                    if settle:
                        harness.spin(lambda: len(upstream.received) >= len(from_client), "the data after")
                self.end_client(client, client_end, cuts)
                harness.spin(lambda: not upstream.pending(), "the client's end upstream")
            if client_end != "rst":
                harness.spin(lambda: not client.pending(), "the end at the client")
                # The end the client sees is clean, whichever side ended first.
                self.assertEqual((client.close_notify, client.eof, client.reset), (True, True, False))
            if client_first or upstream_end == "fin":
                # The upstream was still open to hear the client's end.
                self.assertTrue(upstream.eof or upstream.reset)
                if settle or client_end != "rst":
                    self.assertFalse(upstream.reset)
            a_reset = client_end == "rst" or upstream_end == "rst"
            for got, sent in ((upstream.received, from_client), (client.received, from_upstream)):
                if settle or not a_reset:
                    self.assertEqual(bytes(got), sent)
                else:
                    self.assertEqual(bytes(got), sent[: len(got)])
            harness.assert_clean_end(self, start)
            if not a_reset:
                self.assertEqual(harness.relayed_since(start), (len(from_client), len(from_upstream)))


class FakeReactorTests(SynchronousTestCase):
    """Tests for this module's FakeReactor."""

    def test_interfaces(self) -> None:
        """It provides the reactor interfaces it declares, and its time is its clock's."""
        fake = FakeReactor()
        self.assertTrue(verifyObject(IReactorTime, fake))
        self.assertTrue(verifyObject(IReactorFDSet, fake))
        fake.clock.advance(7)
        self.assertEqual(fake.seconds(), fake.clock.seconds())


class RelayEdgeTests(HarnessMixin, SynchronousTestCase):
    """Tests for the relay's paths the property tests reach rarely or never."""

    def finish(self, client: Client, upstream: End, reply: bytes) -> None:
        """The upstream answers ``reply`` and ends; the client gets it all, close_notify, EOF."""
        harness = self.harness
        harness.send(upstream, reply, [])
        upstream.fin()
        harness.spin(lambda: client.eof, "the upstream's end at the client")
        self.assertEqual((bytes(client.received), client.close_notify, client.reset), (reply, True, False))

    def test_tickets_with_the_first_records(self) -> None:
        """
        TLS 1.3: the session tickets OpenSSL makes as the handshake ends
        are not sent on their own; they go with the first records to the
        client (here the upstream's answer), and the client can resume with
        them.
        """
        harness = self.harness
        with harness.connection() as start:
            client, flight = harness.handshake([])
            client.reading = False  # what arrives stays in the socket
            harness.send(client, flight, [])
            upstream = harness.accept_upstream()
            harness.run_ready()
            self.assertEqual(select.select([client.sock], [], [], 0)[0], [])
            harness.send(upstream, b"answer", [])
            harness.run_ready()
            raw = client.sock.recv(65536)
            self.assertGreaterEqual(count_records(0, b"", raw)[0], 2)
            client.incoming.write(raw)
            client.reading = True
            client.pump()
            self.assertEqual(bytes(client.received), b"answer")
            self.assertTrue(client.tls.session.has_ticket)
            self.end_both(client, upstream)
            harness.assert_clean_end(self, start)

    def test_close_notify_and_fin_in_one_segment(self) -> None:
        """
        The upstream's FIN becomes the client's close_notify and FIN in one
        TCP segment (``MSG_MORE`` on the close_notify, the shutdown right
        after): the client's socket counts one segment in for both.
        """
        harness = self.harness
        with harness.connection() as start:
            client, upstream = harness.connect([], [])
            harness.send(upstream, b"answer", [])
            harness.spin(lambda: bytes(client.received) == b"answer", "the answer at the client")
            harness.send(client, client.close_notify_record(), [])
            client.fin()
            harness.spin(lambda: upstream.eof, "the client's half-close upstream")
            before = segments_in(client.sock)
            upstream.fin()
            harness.spin(lambda: client.eof, "the upstream's half-close at the client")
            self.assertTrue(client.close_notify)
            self.assertEqual(segments_in(client.sock) - before, 1)
            harness.assert_clean_end(self, start)

    def test_tls12_finished_at_once(self) -> None:
        """
        TLS 1.2: the server's last flight (ticket, Finished) goes out as the
        handshake ends — the client waits for it before sending anything.
        """
        harness = self.harness
        with harness.connection() as start:
            client = harness.tls12_client()
            harness.send(client, client.handshake_step(), [])
            harness.spin(lambda: client.incoming.pending > 0, "the server's first flight")
            second = client.handshake_step()
            self.assertFalse(client.handshake_done)
            harness.send(client, second, [])
            harness.spin(lambda: not client.handshake_step() and client.handshake_done, "the server's Finished")
            self.assertEqual(client.tls.version(), "TLSv1.2")
            upstream = harness.accept_upstream()
            harness.send(client, client.close_notify_record(), [])
            client.fin()
            harness.spin(lambda: upstream.eof, "the client's half-close upstream")
            self.finish(client, upstream, b"answer")
            harness.assert_clean_end(self, start)

    def test_everything_at_once(self) -> None:
        """
        A client that sends its Finished with application data in one
        segment, then more than the engine would hold for an upstream still
        connecting (:data:`~kongacme.engine.relay.MAX_PENDING`), its
        close_notify and its FIN without waiting: the upstream gets every
        byte, then the half-close. (This upstream, on this host, is
        connected before ``connect()`` returns; an upstream still
        connecting is ``test_engine_lean``'s ``test_upstream_connects_later``.)
        """
        harness = self.harness
        with harness.connection() as start:
            payload = random.Random(1).randbytes(MAX_PENDING * 2 + 1)
            client, flight = harness.handshake([])
            client.sock.sendall(flight + client.encrypt(payload[:4096]))
            harness.send(client, client.encrypt(payload[4096:]) + client.close_notify_record(), [])
            client.fin()
            upstream = harness.accept_upstream()
            harness.spin(lambda: upstream.eof, "the client's half-close upstream")
            self.assertEqual(bytes(upstream.received), payload)
            self.finish(client, upstream, b"answer")
            harness.assert_clean_end(self, start)

    def test_half_close_behind_a_full_upstream(self) -> None:
        """
        An upstream that does not read stops the engine reading the client
        (the client cannot send everything); the client's close_notify and
        FIN at the end of its stream reach the upstream after every byte
        once it reads again.
        """
        harness = self.harness
        with harness.connection() as start:
            payload = random.Random(2).randbytes(16 * 1024 * 1024)
            client, upstream = harness.connect([], [])
            upstream.reading = False
            records = client.encrypt(payload) + client.close_notify_record()
            sent = harness.send_what_fits(client, records)
            self.assertLess(sent, len(records))
            upstream.reading = True
            harness.send(client, records[sent:], [])
            client.fin()
            harness.spin(lambda: upstream.eof, "the client's half-close upstream")
            self.assertEqual(bytes(upstream.received), payload)
            self.finish(client, upstream, b"answer")
            harness.assert_clean_end(self, start)


    def test_upstream_hangup_behind_a_full_client(self) -> None:
        """
        With the client's half-close passed on (the upstream's socket shut
        for writing), the upstream's FIN makes its socket hang up
        (``EPOLLHUP``, reported whatever the mask). A client that does not
        read still holds the upstream back: the engine keeps at most one
        read's worth of records for it, not what the upstream sent, and
        everything arrives once the client reads again.
        """
        harness = self.harness
        with harness.connection() as start:
            client, upstream = harness.connect([], [])
            harness.send(client, client.close_notify_record(), [])
            client.fin()
            harness.spin(lambda: upstream.eof, "the client's half-close upstream")
            client.reading = False
            reply = random.Random(3).randbytes(4 * 1024 * 1024)
            sent = harness.send_what_fits(upstream, reply)
            upstream.fin()
            for _ in range(20):
                harness.run_ready()
            relay = harness.relay()
            held = len(relay._to_client or b"")
            # One upstream read as records (16 KiB of plaintext each, and their headers).
            self.assertLessEqual(held, READ_SIZE + (READ_SIZE >> 9) + 256)
            client.reading = True
            harness.spin(lambda: client.eof, "the upstream's end at the client")
            self.assertEqual((bytes(client.received), client.close_notify), (reply[:sent], True))
            harness.assert_clean_end(self, start)


    def test_client_hangup_behind_a_full_upstream(self) -> None:
        """
        The other way round: with the upstream's FIN passed on (close_notify
        and a FIN to the client), the client's own FIN makes its socket hang
        up; an upstream that does not read still holds the client back (at
        most one read's worth waits for it), and every byte arrives once it
        reads again.
        """
        harness = self.harness
        with harness.connection() as start:
            client, upstream = harness.connect([], [])
            upstream.fin()
            harness.spin(lambda: client.eof, "the upstream's half-close at the client")
            self.assertTrue(client.close_notify)
            upstream.reading = False
            payload = random.Random(4).randbytes(4 * 1024 * 1024)
            records = client.encrypt(payload) + client.close_notify_record()
            sent = harness.send_what_fits(client, records)
            client.fin()
            for _ in range(20):
                harness.run_ready()
            relay = harness.relay()
            self.assertLessEqual(len(relay._upstream_backlog or b""), READ_SIZE)
            self.assertEqual(harness.engine.parked, {relay})
            upstream.reading = True
            harness.spin(lambda: upstream.eof, "the client's end upstream")
            self.assertEqual((sent, bytes(upstream.received)), (len(records), payload))
            harness.assert_clean_end(self, start)
            self.assertEqual(harness.engine.parked, set())

    def test_parked_relay_stopped(self) -> None:
        """
        ``LeanEngine.stop()`` aborts a relay whose client socket is out of
        the epoll (parked on a hang-up) even when the loop has no other
        socket of it: its upstream's entry is taken out here by hand, as
        no path of the relay is known to leave it so.
        """
        harness = self.harness
        client, upstream = harness.connect([], [])
        upstream.fin()
        harness.spin(lambda: client.eof, "the upstream's half-close at the client")
        upstream.reading = False
        harness.send_what_fits(client, client.encrypt(random.Random(6).randbytes(4 * 1024 * 1024)))
        client.fin()
        for _ in range(20):
            harness.run_ready()
        relay = harness.relay()
        self.assertEqual(harness.engine.parked, {relay})
        harness.engine.loop.unregister(relay._ufd)
        self.assertNotIn(relay, harness.engine.loop.handlers.values())
        harness.engine.stop()
        self.assertTrue(relay._done)
        self.assertEqual(harness.engine.parked, set())
        self.assertEqual(harness.limit.in_use, 0)


    def test_steady_state_left_and_taken_again(self) -> None:
        """
        Once both sides have exchanged a record the relay is in the steady
        state (its short path); a client that stops reading takes it out
        (records wait for ``EPOLLOUT``, the upstream is not read), and once
        the client has read everything, the next exchange puts it back.
        Every byte arrives, and the counters count each of them once.
        """
        harness = self.harness
        with harness.connection() as start:
            client, upstream = harness.connect([], [])
            relay = harness.relay()
            self.exchange(client, upstream, b"GET / 1", b"reply 1")
            self.assertTrue(relay.in_steady_state())
            download = random.Random(7).randbytes(4 * 1024 * 1024)
            self.download_not_read_at_first(client, upstream, relay, download)
            self.exchange(client, upstream, b"GET / 2", b"reply 2")
            self.assertTrue(relay.in_steady_state())
            self.assertEqual(bytes(upstream.received), b"GET / 1GET / 2")
            self.assertEqual(bytes(client.received), b"reply 1" + download + b"reply 2")
            self.assertEqual(
                relay.relayed(),
                (len(upstream.received), len(client.received)),
            )
            harness.send(client, client.close_notify_record(), [])
            client.fin()
            harness.spin(lambda: upstream.eof, "the client's half-close upstream")
            # The compiled steady state passes the own binding's close_notify
            # on itself and serves the upstream's side on; elsewhere it is over.
            ends_compiled = self.compiled is not None and self.binding in ("openssl", "shared")
            self.assertEqual(relay.in_steady_state(), ends_compiled)
            upstream.fin()
            harness.spin(lambda: client.eof, "the upstream's end at the client")
            self.assertEqual((client.close_notify, client.reset), (True, False))
            harness.assert_clean_end(self, start)

    def test_steady_state_largest_records(self) -> None:
        """
        In the steady state a segment that is one whole record is read
        asking OpenSSL for no more than the record's length: records of
        the largest plaintext (16 KiB) and of one byte, each alone in its
        segment, arrive whole.
        """
        harness = self.harness
        with harness.connection() as start:
            client, upstream = harness.connect([], [])
            relay = harness.relay()
            harness.send(client, client.encrypt(b"hello"), [])
            harness.spin(lambda: bytes(upstream.received) == b"hello", "the first record upstream")
            harness.send(upstream, b"ok", [])
            harness.spin(lambda: bytes(client.received) == b"ok", "the reply at the client")
            payload = random.Random(8).randbytes(16384)
            expected = b"hello"
            general: list[int] = []  # segments that went the general way
            general_path = relay._client_data

            def client_data(data: bytes) -> None:
                general.append(len(data))
                general_path(data)

            relay._client_data = client_data  # type: ignore[method-assign]
            for piece in (payload, b"x", payload[::-1]):
                self.assertTrue(relay.in_steady_state())
                record = client.encrypt(piece)
                self.assertEqual(count_records(0, b"", record)[:2], (1, 0))
                harness.send(client, record, [])
                expected += piece
                harness.spin(lambda: bytes(upstream.received) == expected, "the record upstream")
            self.assertEqual(general, [])
            self.assertEqual(relay.relayed()[0], len(expected))
            self.end_both(client, upstream)
            harness.assert_clean_end(self, start)

    def test_upstream_read_size_follows_the_traffic(self) -> None:
        """
        A read from the upstream that comes back full (a download) makes
        the next ones larger (:data:`~kongacme.engine.sockets.BULK_READ_SIZE`);
        a short one makes them small again; every byte arrives either way.
        """
        harness = self.harness
        with harness.connection() as start:
            client, upstream = harness.connect([], [])
            relay = harness.relay()
            self.assertEqual(relay.upstream_read_size(), READ_SIZE)
            download = random.Random(5).randbytes(BULK_READ_SIZE * 2)
            harness.engine.loop.poll_rounds = 1  # one read per doRead, to see each
            client.reading = False  # let it pile up in the upstream's socket
            upstream.sock.setblocking(True)
            upstream.sock.sendall(download[:READ_SIZE * 3])
            upstream.sock.setblocking(False)
            select.select([harness.engine.loop], [], [], WAIT)
            harness.engine.loop.doRead()  # one read: 64 KiB of the 192 there, full
            self.assertEqual(relay.upstream_read_size(), BULK_READ_SIZE)
            harness.run_ready()  # the next asks 256 KiB and gets the 128 left: short
            self.assertEqual(relay.upstream_read_size(), READ_SIZE)
            client.reading = True
            harness.send(upstream, download[READ_SIZE * 3 :], [])
            harness.send(upstream, b"small reply", [])
            harness.spin(lambda: bytes(client.received).endswith(b"small reply"), "the reply at the client")
            self.assertEqual(bytes(client.received), download + b"small reply")
            harness.send(client, client.close_notify_record(), [])
            client.fin()
            upstream.fin()
            harness.spin(lambda: client.eof and upstream.eof, "both ends")
            harness.assert_clean_end(self, start)


#: The proxy's idle timeout in these tests (``ProxyFactory``'s default), and
#: how late the timer wheel may run a deadline (its default 10 buckets a second).
IDLE = 300
LATE = 0.1


class IdlePropertyTests(HarnessMixin, SynchronousTestCase):
    """
    Tests for the relay's idle deadline, on the fake reactor's clock: hours
    pass in no time, and exactly when the test says.
    """

    @settings(max_examples=40, deadline=None, suppress_health_check=ONE_TEST_TWO_BINDINGS)
    @given(steps=st.lists(st.tuples(st.integers(0, IDLE - 1), st.booleans()), max_size=5))
    def test_idle_deadline_follows_the_last_byte(self, steps) -> None:
        """
        Bytes either way, after any pauses shorter than the idle timeout,
        keep a connection open; once the idle timeout has passed since the
        last of them (and the wheel's resolution), both sides are reset,
        with one log line, and the engine holds nothing.
        """
        harness = self.harness
        clock = harness.reactor.clock
        logged = len(self.relay_logs.events)

        def idle_lines() -> list[dict[str, Any]]:
            return [e for e in self.relay_logs.events[logged:] if "idle" in e["log_format"]]

        with harness.connection() as start:
            client, upstream = harness.connect([], [])
            for pause, from_client in [(0, True), *steps]:
                clock.advance(pause)
                harness.run_ready()
                self.assertEqual((client.pending(), upstream.pending()), (True, True), (pause, clock.seconds()))
                sender, receiver = (client, upstream) if from_client else (upstream, client)
                expected = len(receiver.received) + 1
                harness.send(sender, client.encrypt(b"x") if from_client else b"x", [])
                harness.spin(lambda: len(receiver.received) == expected, "one byte through")
            clock.advance(IDLE - LATE)
            harness.run_ready()
            self.assertEqual((client.pending(), upstream.pending()), (True, True))
            self.assertEqual(idle_lines(), [])
            clock.advance(2 * LATE)
            harness.spin(lambda: not (client.pending() or upstream.pending()), "both sides reset")
            self.assertEqual((client.reset, upstream.reset), (True, True))
            self.assertEqual(len(idle_lines()), 1)
            harness.assert_clean_end(self, start)


# The same properties with every session on the standard library's ssl
# (a busy certificate's, kongacme.tls.stdlib) instead of pyOpenSSL.


class SplitPropertyStdlibTests(SplitPropertyTests):
    binding = "stdlib"


class EndingPropertyStdlibTests(EndingPropertyTests):
    binding = "stdlib"


class RelayEdgeStdlibTests(RelayEdgeTests):
    binding = "stdlib"


class IdlePropertyStdlibTests(IdlePropertyTests):
    binding = "stdlib"


# The same properties on the standard library's ssl without the compiled
# dispatch (kongacme.engine._steady): the Python loop and the relay's Python
# steady state, what runs where the module is not built.


class SplitPropertyPythonTests(SplitPropertyTests):
    binding = "stdlib"
    compiled = None


class EndingPropertyPythonTests(EndingPropertyTests):
    binding = "stdlib"
    compiled = None


class RelayEdgePythonTests(RelayEdgeTests):
    binding = "stdlib"
    compiled = None


class IdlePropertyPythonTests(IdlePropertyTests):
    binding = "stdlib"
    compiled = None


# The same properties on kongacme's own OpenSSL binding (kongacme.tls._openssl,
# where it is built), which busy certificates get by default: with the
# compiled steady state calling it through its C API, and with the Python
# loop and steady state calling its methods.


class SplitPropertyOpenSSLTests(SplitPropertyTests):
    binding = "openssl"


class EndingPropertyOpenSSLTests(EndingPropertyTests):
    binding = "openssl"


class RelayEdgeOpenSSLTests(RelayEdgeTests):
    binding = "openssl"


class IdlePropertyOpenSSLTests(IdlePropertyTests):
    binding = "openssl"


class SplitPropertyOpenSSLPythonTests(SplitPropertyTests):
    binding = "openssl"
    compiled = None


class EndingPropertyOpenSSLPythonTests(EndingPropertyTests):
    binding = "openssl"
    compiled = None


# The same properties on the own binding's shared contexts (a certificate
# before it is busy: each session brings its leaf and key).


class SplitPropertySharedTests(SplitPropertyTests):
    binding = "shared"


class EndingPropertySharedTests(EndingPropertyTests):
    binding = "shared"
