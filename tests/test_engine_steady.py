"""
Tests for kongacme.engine._steady, the compiled dispatch and steady state,
on the harness of tests.test_engine_properties (a fake reactor whose loop
the test runs, a real client and upstream): which events it serves itself,
that each way out of the steady state reaches the relay's Python with what
was read, and that an unexpected error ends one connection only.

The property tests there (any split, any order of endings, the idle
deadline) run on it too: their *StdlibTests and *OpenSSLTests classes use
the compiled dispatch (the latter with kongacme's own binding, called
through its C API), their *PythonTests classes the Python one.
"""

from __future__ import annotations

import errno
import os
import random
import select
import socket
import ssl
from typing import Any, Callable


from twisted.trial.unittest import SynchronousTestCase

from kongacme.engine import relay as relay_module
from kongacme.engine.loop import COMPILED
from kongacme.engine.relay import Relay
from kongacme.proxy.routes import Route, RouteTable
from tests.proxyhelpers import LogCapture, unanswered_port
from tests.test_engine_properties import SERVER_NAME, Client, End, HarnessMixin, segments_in

#: The relay's names of the codes, and the module's (kongacme/engine/_steady.c).
CODES = [
    "CLIENT_DATA",
    "CLIENT_LOST",
    "CLIENT_ENDED",
    "READ_FAILED",
    "UPSTREAM_LOST",
    "UPSTREAM_SHORT",
    "UPSTREAM_ENDED",
    "CLIENT_SHORT",
    "BOTH_ENDED",
    "HANDSHAKE_FAILED",
    "HANDSHAKEN",
    "CLIENT_PLAINTEXT",
]


def recorded_departures(relay: Relay) -> list[str]:
    """The list the names of ``relay``'s departures from the compiled module go to, from now on."""
    departures: list[str] = []
    left = relay._left_steady

    def recorded(what: int, arg: Any, sent: int) -> None:
        departures.append(CODES[what])
        left(what, arg, sent)

    relay._left_steady = recorded  # type: ignore[method-assign]
    return departures


class CompiledSteadyTests(HarnessMixin, SynchronousTestCase):
    """
    The compiled steady state, on the standard library's ssl (its sessions
    called through their Python methods).
    """

    binding = "stdlib"
    compiled = COMPILED

    if COMPILED is None:
        skip = "kongacme.engine._steady is not built (no C compiler or Python headers at install)"

    def steady_connection(self) -> tuple[Client, End, Relay, list[str]]:
        """
        A connection after one exchange (the first reply carries the
        session tickets; the compiled steady state serves it, the tickets
        held in the pair), its relay, and the list the names of its
        departures from the steady state go to.
        """
        harness = self.harness
        client, upstream = harness.connect([], [])
        relay = harness.relay()
        self.exchange(client, upstream, b"GET / 0", b"reply 0")
        self.assertTrue(relay.in_steady_state())
        return client, upstream, relay, recorded_departures(relay)

    def test_codes(self) -> None:
        """The relay's LEFT_* codes are the module's."""
        self.assertEqual([getattr(relay_module, "LEFT_" + name) for name in CODES], [getattr(COMPILED, name) for name in CODES])

    def test_pair_arguments(self) -> None:
        """A Pair refuses a negative descriptor; a closed one is no longer live."""
        self.assertRaises(ValueError, COMPILED.Pair, object(), -1, 3, len, len, len, len, len)
        pair = COMPILED.Pair(object(), 3, 4, len, len, len, len, len)
        self.assertEqual((pair.live, pair.cfd, pair.ufd, pair.take()), (True, 3, 4, (0, 0, 0.0)))
        pair.close()
        self.assertFalse(pair.live)

    def test_exchanges_served_compiled(self) -> None:
        """
        Kept-alive exchanges in the steady state are served by the compiled
        module, each request and reply in one step, with no departure: both
        sockets are in the loop's ``steady`` table, the counters count every
        byte once, and the last activity is the reactor's time. When the
        connection ends, the pair is closed and the table is empty.
        """
        harness = self.harness
        clock = harness.reactor.clock
        with harness.connection() as start:
            client, upstream, relay, departures = self.steady_connection()
            pair = relay._pair
            self.assertEqual(harness.engine.loop.steady, {relay._cfd: pair, relay._ufd: pair})
            # The own binding's session is called through its C API, the standard library's through its methods.
            self.assertEqual(pair.native, self.binding in ("openssl", "shared"))
            for i in range(1, 6):
                clock.advance(7)
                self.exchange(client, upstream, b"GET / %d" % i, b"reply %d" % i)
                self.assertEqual(relay._pair.last_activity, clock.seconds())
            # The first exchange (in steady_connection) and these five.
            self.assertEqual((pair.client_steps, pair.upstream_steps, pair.departures), (6, 6, 0))
            self.assertEqual(departures, [])
            self.assertEqual(
                relay.relayed(),
                (len(upstream.received), len(client.received)),
            )
            self.assertFalse(relay._steady)  # the Python short path is not used beside it
            self.end_both(client, upstream)
            harness.assert_clean_end(self, start)
            self.assertEqual((pair.live, relay._pair, harness.engine.loop.steady), (False, None, {}))
            # The own binding's session ends there too: the relay's Python
            # only releases the connection.
            self.assertEqual(departures, ["BOTH_ENDED"] if self.binding in ("openssl", "shared") else ["CLIENT_ENDED"])

    def test_tickets_held_by_the_pair(self) -> None:
        """
        Once the handshake is done and the upstream connected, the relay is
        in the compiled steady state with the TLS 1.3 session tickets held
        in its pair: the first reply goes out after them in one send (one
        upstream step, no departure), and the client can resume with them.
        """
        harness = self.harness
        with harness.connection() as start:
            client, upstream = harness.connect([], [])
            relay = harness.relay()
            harness.run_ready()
            pair = relay._pair
            self.assertTrue(relay.in_steady_state())
            self.assertIsInstance(pair.held, bytes)
            self.assertIsNone(relay._held)
            before = segments_in(client.sock)
            harness.send(upstream, b"answer", [])
            harness.spin(lambda: bytes(client.received) == b"answer", "the answer at the client")
            self.assertEqual(segments_in(client.sock) - before, 1)
            self.assertEqual((pair.upstream_steps, pair.departures, pair.held), (1, 0, None))
            self.assertTrue(client.tls.session.has_ticket)
            self.end_both(client, upstream)
            harness.assert_clean_end(self, start)

    def test_held_tickets_go_first_from_python(self) -> None:
        """
        Records the relay's Python sends while the pair still holds the
        tickets (here the close_notify for the upstream's FIN, before any
        reply) go after them: the client reads every record.
        """
        harness = self.harness
        with harness.connection() as start:
            client, upstream = harness.connect([], [])
            relay = harness.relay()
            harness.run_ready()
            self.assertIsNotNone(relay._pair.held)
            upstream.fin()
            harness.spin(lambda: client.eof, "the upstream's end at the client")
            self.assertEqual((client.close_notify, client.reset), (True, False))
            self.assertTrue(client.tls.session.has_ticket)
            self.end_both(client, upstream)
            harness.assert_clean_end(self, start)

    def client_ended(self, client: Client, upstream: End, relay: Relay) -> None:
        """
        The client's close_notify: passed on upstream (its FIN there); with
        the own binding, by the compiled steady state, which serves the
        upstream's side on (``Pair.client_ended``); with the standard
        library's, by the relay's Python (a departure).
        """
        harness = self.harness
        harness.send(client, client.close_notify_record(), [])
        harness.spin(lambda: upstream.eof, "the client's half-close upstream")
        native = self.binding in ("openssl", "shared")
        self.assertEqual((relay._pair.client_ended, relay.in_steady_state()), (native, native))

    def test_reply_after_the_clients_close_notify(self) -> None:
        """
        After the client's close_notify the upstream's answer still reaches
        the client (RFC 8446 §6.1: a half-close), then the upstream's FIN
        becomes close_notify and a FIN; with the own binding all of it in
        the compiled steady state, the relay's Python only releasing.
        """
        harness = self.harness

        def act(client: Client, upstream: End, relay: Relay) -> None:
            self.client_ended(client, upstream, relay)
            harness.send(upstream, b"late answer", [])
            harness.spin(lambda: bytes(client.received).endswith(b"late answer"), "the late answer")
            upstream.fin()
            harness.spin(lambda: client.eof, "the upstream's end at the client")
            self.assertEqual((client.close_notify, client.reset), (True, False))

        native = self.binding in ("openssl", "shared")
        self.departure(act, ["BOTH_ENDED"] if native else ["CLIENT_ENDED"], lambda client, upstream: client.fin())

    def test_client_reset_after_its_close_notify(self) -> None:
        """
        The client's reset after its close_notify (a hang-up the compiled
        steady state leaves to Python, which takes its state back first):
        the upstream gets its FIN and the connection ends cleanly.
        """
        harness = self.harness

        def act(client: Client, upstream: End, relay: Relay) -> None:
            self.client_ended(client, upstream, relay)
            client.rst()
            harness.spin(lambda: relay._done, "the relay's end")
            self.assertFalse(upstream.reset)

        self.departure(act, [] if self.binding in ("openssl", "shared") else ["CLIENT_ENDED"], lambda c, u: u.close())

    def test_download_behind_the_clients_close_notify(self) -> None:
        """
        A download the client does not read at first, after its
        close_notify, then the upstream's FIN: the records wait (a short
        send leaves the compiled steady state with what it knows: the
        client ended, the upstream shut), then all of it and close_notify
        arrive.
        """
        harness = self.harness
        download = random.Random(11).randbytes(4 * 1024 * 1024)

        def act(client: Client, upstream: End, relay: Relay) -> None:
            self.client_ended(client, upstream, relay)
            client.reading = False
            sent = harness.send_what_fits(upstream, download)
            for _ in range(5):
                harness.run_ready()
            self.assertIsNotNone(relay._to_client)
            self.assertEqual((relay._client_eof, relay._upstream_shut), (True, True))
            client.reading = True
            harness.send(upstream, download[sent:], [])
            upstream.fin()
            harness.spin(lambda: client.eof, "the download and the upstream's end at the client")
            self.assertEqual(bytes(client.received)[-len(download):], download)
            self.assertEqual((client.close_notify, client.reset), (True, False))

        native = self.binding in ("openssl", "shared")
        self.departure(act, ["CLIENT_SHORT"] if native else ["CLIENT_ENDED"], lambda client, upstream: client.fin())

    def test_pair_held(self) -> None:
        """Pair.held takes bytes or None (empty bytes: None), nothing else; close() drops it."""
        pair = COMPILED.Pair(object(), 3, 4, len, len, len, len, len)
        self.assertIsNone(pair.held)
        pair.held = b"tickets"
        self.assertEqual(pair.held, b"tickets")
        pair.held = b""
        self.assertIsNone(pair.held)
        self.assertRaises(TypeError, setattr, pair, "held", "text")
        pair.held = b"tickets"
        pair.close()
        self.assertIsNone(pair.held)

    def departure(
        self, act: Callable[[Client, End, Relay], None], expected: list[str], ending: Callable[[Client, End], None]
    ) -> Relay:
        """
        In one steady connection, ``act`` leaves the steady state as
        ``expected`` names; ``ending`` ends the connection, which must end
        cleanly.
        """
        harness = self.harness
        with harness.connection() as start:
            client, upstream, relay, departures = self.steady_connection()
            act(client, upstream, relay)
            self.assertEqual(departures[: len(expected)], expected)
            ending(client, upstream)
            harness.assert_clean_end(self, start)
        return relay

    def test_record_cut_across_segments(self) -> None:
        """
        A record in two segments goes to the general path (with the first
        segment); the request arrives whole, and the next exchange is served
        compiled again.
        """
        harness = self.harness

        def act(client: Client, upstream: End, relay: Relay) -> None:
            record = client.encrypt(b"cut request")
            harness.send(client, record, [3])
            harness.spin(lambda: bytes(upstream.received).endswith(b"cut request"), "the cut record")
            steps = relay._pair.client_steps
            self.exchange(client, upstream, b"GET / again", b"reply again")
            self.assertEqual(relay._pair.client_steps, steps + 1)

        self.departure(act, ["CLIENT_DATA"], self.end_both)

    def test_two_records_in_one_segment(self) -> None:
        """Two records in one segment: the general path, both arrive in order."""
        harness = self.harness

        def act(client: Client, upstream: End, relay: Relay) -> None:
            harness.send(client, client.encrypt(b"one,") + client.encrypt(b"two"), [])
            harness.spin(lambda: bytes(upstream.received).endswith(b"one,two"), "both records")

        self.departure(act, ["CLIENT_DATA"], self.end_both)

    def test_client_fin(self) -> None:
        """The client's FIN alone (no close_notify) is read here and handed over as empty data."""
        harness = self.harness

        def act(client: Client, upstream: End, relay: Relay) -> None:
            client.fin()
            harness.spin(lambda: upstream.eof, "the client's half-close upstream")

        def ending(client: Client, upstream: End) -> None:
            upstream.fin()
            harness.spin(lambda: client.eof, "the upstream's half-close at the client")

        self.departure(act, ["CLIENT_DATA"], ending)

    def test_upstream_fin(self) -> None:
        """The upstream's FIN becomes close_notify and a FIN to the client."""
        harness = self.harness

        def act(client: Client, upstream: End, relay: Relay) -> None:
            upstream.fin()
            harness.spin(lambda: client.eof, "the upstream's half-close at the client")
            self.assertEqual(client.close_notify, True)

        def ending(client: Client, upstream: End) -> None:
            harness.send(client, client.close_notify_record(), [])
            client.fin()
            harness.spin(lambda: upstream.eof, "the client's half-close upstream")

        self.departure(act, ["UPSTREAM_ENDED"], ending)

    def test_client_not_reading(self) -> None:
        """
        A download the client does not read: the short send is handed over
        with the records it did not take, which reach the client whole once
        it reads.
        """
        download = random.Random(11).randbytes(4 * 1024 * 1024)

        def act(client: Client, upstream: End, relay: Relay) -> None:
            self.download_not_read_at_first(client, upstream, relay, download)

        self.departure(act, ["CLIENT_SHORT"], self.end_both)

    def test_upstream_not_reading(self) -> None:
        """
        An upload the upstream does not read, one record per segment: the
        short send upstream is handed over with the plaintext it did not
        take; every byte arrives once the upstream reads.
        """
        harness = self.harness
        upload = random.Random(12).randbytes(16384 * 256)

        def act(client: Client, upstream: End, relay: Relay) -> None:
            upstream.reading = False
            offset = 0
            while relay._upstream_backlog is None:
                self.assertLess(offset, len(upload), "the upstream's socket never filled")
                harness.send(client, client.encrypt(upload[offset : offset + 16384]), [])
                offset += 16384
            self.assertFalse(relay.in_steady_state())
            upstream.reading = True
            harness.send(client, client.encrypt(upload[offset:]), [])
            harness.spin(lambda: bytes(upstream.received).endswith(upload), "the upload")

        self.departure(act, ["UPSTREAM_SHORT"], self.end_both)

    def test_resets_go_to_python(self) -> None:
        """
        A reset from either side comes with ``EPOLLHUP``/``EPOLLERR``, not
        ``EPOLLIN`` alone: the relay's Python takes it (no departure from the
        compiled step), and the table forgets the relay as it ends.
        """
        harness = self.harness

        def client_resets(client: Client, upstream: End, relay: Relay) -> None:
            client.rst()
            harness.spin(lambda: upstream.eof, "the upstream's end")

        def upstream_resets(client: Client, upstream: End, relay: Relay) -> None:
            upstream.rst()
            harness.spin(lambda: client.eof, "the client's end")
            self.assertEqual(client.close_notify, True)

        def client_ends(client: Client, upstream: End) -> None:
            harness.send(client, client.close_notify_record(), [])
            client.fin()

        for act, ending in [(client_resets, lambda client, upstream: None), (upstream_resets, client_ends)]:
            relay = self.departure(act, [], ending)
            self.assertEqual((relay._pair, harness.engine.loop.steady), (None, {}))

    def test_corrupt_record(self) -> None:
        """
        A whole record whose ciphertext was tampered with: OpenSSL's error
        goes to the relay's Python, which ends the connection (the upstream
        gets a FIN, nothing of the record passes).
        """
        harness = self.harness

        def act(client: Client, upstream: End, relay: Relay) -> None:
            record = bytearray(client.encrypt(b"tampered"))
            record[-1] ^= 0xFF
            before = bytes(upstream.received)
            harness.send(client, bytes(record), [])
            harness.spin(lambda: upstream.eof, "the upstream's end")
            self.assertEqual(bytes(upstream.received), before)

        self.departure(act, ["READ_FAILED"], lambda client, upstream: None)

    def test_unexpected_error_contained(self) -> None:
        """
        An exception no path expects, raised by a session method the
        compiled step calls, is logged once and ends that connection only
        (as the Python loop does): both sides reset, the engine holds
        nothing, and the next connection is served.
        """
        harness = self.harness
        with harness.connection() as start:
            client, upstream, relay, departures = self.steady_connection()
            tls = relay._tls

            def boom(size: int, buffer: Any = None) -> bytes:
                raise RuntimeError("boom")

            relay._pair.close()
            pair = relay._pair = COMPILED.Pair(relay, relay._cfd, relay._ufd, tls.feed, boom, tls.write, tls.take, relay._seconds)
            harness.engine.loop.steady.update({relay._cfd: pair, relay._ufd: pair})
            harness.send(client, client.encrypt(b"GET / 1"), [])
            harness.spin(lambda: relay._done, "the connection to be aborted")
            self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
            self.assertEqual(departures, [])
            harness.spin(lambda: not (client.pending() or upstream.pending()), "both sides reset")
            self.assertEqual((client.reset, upstream.reset), (True, True))
            harness.assert_clean_end(self, start)
        with harness.connection() as start:
            client, upstream, relay, departures = self.steady_connection()
            self.exchange(client, upstream, b"GET / next", b"reply next")
            self.assertEqual(relay._pair.client_steps, 2)
            self.end_both(client, upstream)
            harness.assert_clean_end(self, start)


class CompiledSteadyOpenSSLTests(CompiledSteadyTests):
    """The same, on kongacme's own binding (kongacme.tls._openssl), called through its C API."""

    binding = "openssl"


class CompiledSteadySharedTests(CompiledSteadyTests):
    """The same, on the own binding's shared contexts (each session with its certificate)."""

    binding = "shared"


class CompiledHandshakeTests(HarnessMixin, SynchronousTestCase):
    """
    The handshake done by the compiled module (the own binding's session,
    its C API): from the ClientHello's answer to the first exchange with one
    pair and no departure, and each way out of it to the relay's Python.
    """

    binding = "openssl"
    compiled = COMPILED

    if COMPILED is None:
        skip = "kongacme.engine._steady is not built (no C compiler or Python headers at install)"

    def begun(self) -> tuple[Client, bytes, Relay, list[str]]:
        """
        A client whose ClientHello was answered (its last flight returned,
        not sent), the relay with the handshake in the compiled module, and
        the list its departures go to.
        """
        client, flight = self.harness.handshake([])
        relay = self.harness.relay()
        self.assertTrue(relay.handshake_compiled())
        self.assertFalse(relay.in_steady_state())
        return client, flight, relay, recorded_departures(relay)

    def test_one_pair_from_handshake_to_end(self) -> None:
        """
        The client's Finished and its request in one segment: the handshake
        is done, the upstream dialled and the request sent there by the
        pair made for the handshake, which then serves the exchange and the
        ends; the relay's Python only counts the handshake, watches the
        upstream and releases.
        """
        harness = self.harness
        handshakes = harness.tls_factory.handshakes
        cached = handshakes["cached"]
        with harness.connection() as start:
            client, flight, relay, departures = self.begun()
            pair = relay._pair
            harness.send(client, flight + client.encrypt(b"GET / first"), [])
            upstream = harness.accept_upstream()
            harness.spin(lambda: bytes(upstream.received) == b"GET / first", "the first request upstream")
            self.assertTrue(relay.in_steady_state())
            self.assertIs(relay._pair, pair)
            self.assertEqual((pair.client_steps, handshakes["cached"]), (1, cached + 1))
            self.assertIsNotNone(pair.held)
            # No socket object for the upstream's descriptor until one is needed.
            self.assertEqual((relay._up, relay._ufd), (None, pair.ufd))
            harness.send(upstream, b"first reply", [])
            harness.spin(lambda: bytes(client.received) == b"first reply", "the first reply")
            self.assertTrue(client.tls.session.has_ticket)
            self.exchange(client, upstream, b"GET / second", b"second reply")
            self.assertEqual(relay.relayed(), (len(b"GET / firstGET / second"), len(b"first replysecond reply")))
            self.end_both(client, upstream)
            harness.assert_clean_end(self, start)
            self.assertEqual(departures, ["BOTH_ENDED"])

    def test_upstream_socket_made_when_needed(self) -> None:
        """
        An upload the upstream does not take at once (a short send there):
        the relay's Python makes the upstream's socket object for what is
        left, and every byte arrives.
        """
        harness = self.harness
        upload = random.Random(5).randbytes(4 * 1024 * 1024)
        with harness.connection() as start:
            client, flight, relay, departures = self.begun()
            harness.send(client, flight, [])
            upstream = harness.accept_upstream()
            self.assertIsNone(relay._up)
            upstream.reading = False
            for offset in range(0, len(upload), 16384):
                harness.send(client, client.encrypt(upload[offset : offset + 16384]), [])
                if relay._upstream_backlog is not None:
                    break
            self.assertEqual(departures[:1], ["UPSTREAM_SHORT"])
            upstream.reading = True
            harness.send(client, client.encrypt(upload[offset + 16384 :]), [])
            harness.spin(lambda: len(upstream.received) == len(upload), "the upload upstream")
            self.assertEqual(bytes(upstream.received), upload)
            self.assertEqual(relay._up.fileno(), relay._ufd)  # made to send what was left
            self.end_both(client, upstream)
            harness.assert_clean_end(self, start)

    def test_finished_cut(self) -> None:
        """
        A Finished cut across segments goes to the relay's Python (with the
        first part), which does the rest of the handshake; the steady state
        is the compiled one all the same.
        """
        harness = self.harness
        with harness.connection() as start:
            client, flight, relay, departures = self.begun()
            harness.send(client, flight, [len(flight) - 3])
            upstream = harness.accept_upstream()
            self.assertEqual(departures, ["CLIENT_DATA"])
            self.exchange(client, upstream, b"GET /", b"reply")
            self.assertTrue(relay.in_steady_state())
            self.assertGreaterEqual(relay._pair.ufd, 0)
            self.end_both(client, upstream)
            harness.assert_clean_end(self, start)

    def test_handshake_failure(self) -> None:
        """
        A Finished that does not verify: the handshake fails there, the
        relay's Python counts it, logs it and sends OpenSSL's alert; no
        upstream is dialled, and nothing is left.
        """
        harness = self.harness
        failed = harness.tls_factory.handshakes["failed"]
        with harness.connection() as start:
            client, flight, relay, departures = self.begun()
            corrupt = flight[:-1] + bytes([flight[-1] ^ 1])
            client.reading = False  # what arrives stays in the socket
            harness.send(client, corrupt, [])
            harness.spin(lambda: relay._done, "the failed handshake's end")
            self.assertEqual(departures, ["HANDSHAKE_FAILED"])
            self.assertEqual(harness.tls_factory.handshakes["failed"], failed + 1)
            self.assertRaises(BlockingIOError, harness.upstream_listener.accept)
            self.assertIn("failed", self.relay_logs.events[-1]["log_format"])
            client.incoming.write(client.sock.recv(65536))
            with self.assertRaises(ssl.SSLError) as alert:
                client.tls.read(65536)
            self.assertIn("BAD_RECORD_MAC", str(alert.exception))
            harness.assert_clean_end(self, start)

    def test_tls12(self) -> None:
        """A TLS 1.2 handshake done there goes on in the relay's Python (HANDSHAKEN): the server's Finished, the dial."""
        harness = self.harness
        with harness.connection() as start:
            client = harness.tls12_client()
            harness.send(client, client.handshake_step(), [])
            harness.spin(lambda: client.incoming.pending > 0, "the server's first flight")
            relay = harness.relay()
            self.assertTrue(relay.handshake_compiled())
            departures = recorded_departures(relay)
            harness.send(client, client.handshake_step(), [])
            harness.spin(lambda: not client.handshake_step() and client.handshake_done, "the server's Finished")
            self.assertEqual((client.tls.version(), departures), ("TLSv1.2", ["HANDSHAKEN"]))
            upstream = harness.accept_upstream()
            self.exchange(client, upstream, b"GET /", b"reply")
            self.end_both(client, upstream)
            harness.assert_clean_end(self, start)

    def test_request_and_close_notify_with_the_finished(self) -> None:
        """
        The Finished, a request and the client's close_notify in one
        segment: the request and the half-close reach the upstream (through
        the relay's Python, CLIENT_PLAINTEXT), then its answer and FIN the client.
        """
        harness = self.harness
        with harness.connection() as start:
            client, flight, relay, departures = self.begun()
            harness.send(client, flight + client.encrypt(b"GET / last") + client.close_notify_record(), [])
            upstream = harness.accept_upstream()
            harness.spin(lambda: upstream.eof, "the request and the half-close upstream")
            self.assertEqual((bytes(upstream.received), departures), (b"GET / last", ["CLIENT_PLAINTEXT"]))
            harness.send(upstream, b"answer", [])
            upstream.fin()
            harness.spin(lambda: client.eof, "the answer and the end at the client")
            self.assertEqual((bytes(client.received), client.close_notify), (b"answer", True))
            harness.assert_clean_end(self, start)

    def upstream_at(self, port: int) -> None:
        """Route every name to ``port`` on this host from now on."""
        self.harness.proxy_factory.router = RouteTable([], Route("127.0.0.1", port))

    def test_upstream_refused(self) -> None:
        """
        An upstream that refuses the pair's connect: the relay's Python
        logs it and closes the client with close_notify.
        """
        harness = self.harness
        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))
        self.upstream_at(closed.getsockname()[1])
        closed.close()
        with harness.connection() as start:
            client, flight, relay, departures = self.begun()
            harness.send(client, flight + client.encrypt(b"GET /"), [])
            harness.spin(lambda: client.eof, "the client closed")
            self.assertEqual((client.close_notify, client.reset, departures), (True, False, []))
            self.assertIn("refused", str(self.relay_logs.events[-1]["reason"]))
            client.fin()
            harness.assert_clean_end(self, start)

    def test_upstream_still_connecting(self) -> None:
        """
        An upstream that does not answer the pair's connect at once (its
        accept queue full): the relay's Python holds the request and waits
        for it, up to the connect deadline, then closes the client with
        close_notify.
        """
        harness = self.harness
        self.upstream_at(unanswered_port(self))
        with harness.connection() as start:
            client, flight, relay, departures = self.begun()
            harness.send(client, flight + client.encrypt(b"GET /"), [])
            self.assertEqual((relay._handshake_done, relay._connected, relay._pending_size), (True, False, 5))
            self.assertFalse(relay.in_steady_state())
            harness.reactor.clock.advance(harness.proxy_factory.connect_timeout)
            harness.spin(lambda: client.eof, "the client closed")
            self.assertEqual((client.close_notify, departures), (True, []))
            client.fin()
            harness.assert_clean_end(self, start)


    def test_pair_for_the_handshake(self) -> None:
        """
        A pair without an upstream descriptor needs the own binding's
        session and an IP address to dial (of its family); else it is refused.
        """
        relay = object()
        session = self.harness.tls_factory.builder.session_for(
            self.harness.tls_factory.cache.lookup(SERVER_NAME), (), relay, True
        )
        self.addCleanup(session.release)
        pair = COMPILED.Pair(relay, 3, -1, len, len, len, len, len, session, (socket.AF_INET, "127.0.0.1", 80))
        self.assertEqual((pair.ufd, pair.native), (-1, True))
        pair = COMPILED.Pair(relay, 3, -1, len, len, len, len, len, session, (socket.AF_INET6, "::1", 80))
        self.assertEqual(pair.ufd, -1)
        for bad in [(socket.AF_INET, "::1", 80), (socket.AF_INET6, "127.0.0.1", 80), (socket.AF_INET, "example.com", 80),
                    (socket.AF_INET, "127.0.0.1", 70000), (socket.AF_UNIX, "/run/x", 0), ("x",)]:
            self.assertRaises((ValueError, TypeError), COMPILED.Pair, relay, 3, -1, len, len, len, len, len, session, bad)
        self.assertRaises(ValueError, COMPILED.Pair, relay, 3, -1, len, len, len, len, len, None, (socket.AF_INET, "127.0.0.1", 80))
        self.assertRaises(ValueError, COMPILED.Pair, relay, 3, -1, len, len, len, len, len, session)


class CompiledHandshakeSharedTests(CompiledHandshakeTests):
    binding = "shared"


class FakeRelay:
    """What the compiled steps call back on a relay: its departures, recorded."""

    def __init__(self) -> None:
        self.departures: list[tuple[str, Any, int]] = []

    def _left_steady(self, what: int, arg: Any, sent: int) -> None:
        self.departures.append((CODES[what], arg, sent))


class DispatchRoundsTests(SynchronousTestCase):
    """
    dispatch(..., rounds): it polls again while the last poll found events,
    up to ``rounds`` polls, and stops at the first poll that finds none.
    """

    if COMPILED is None:
        skip = "kongacme.engine._steady is not built (no C compiler or Python headers at install)"

    def chain(self, links: int, rounds: int) -> tuple[int, list[int]]:
        """
        ``links`` pipes, each one's handler reading its byte and writing one
        to the next: one dispatch with ``rounds``; what it returned, and the
        links served in order.
        """
        epoll = select.epoll()
        self.addCleanup(epoll.close)
        pipes = []
        for _ in range(links):
            read_end, write_end = os.pipe()
            self.addCleanup(os.close, read_end)
            self.addCleanup(os.close, write_end)
            pipes.append((read_end, write_end))
        served: list[int] = []

        class Link:
            def __init__(self, index: int) -> None:
                self.index = index

            def on_events(self, fd: int, events: int) -> None:
                os.read(fd, 1)
                served.append(self.index)
                if self.index + 1 < links:
                    os.write(pipes[self.index + 1][1], b"x")

        handlers = {read_end: Link(i) for i, (read_end, _) in enumerate(pipes)}
        for read_end, _ in pipes:
            epoll.register(read_end, select.EPOLLIN)
        os.write(pipes[0][1], b"x")
        failures: list[Any] = []
        count = COMPILED.dispatch(epoll.fileno(), handlers, {}, 8, lambda *a: failures.append(a), rounds)
        self.assertEqual(failures, [])
        return count, served

    def test_one_round(self) -> None:
        """One poll: only what was ready at first (the default)."""
        self.assertEqual(self.chain(5, 1), (1, [0]))

    def test_polls_again(self) -> None:
        """Each poll serves what the previous one made ready, up to ``rounds`` polls."""
        self.assertEqual(self.chain(5, 3), (3, [0, 1, 2]))

    def test_stops_when_nothing_comes(self) -> None:
        """A poll that finds nothing ends it, whatever ``rounds`` allows."""
        self.assertEqual(self.chain(2, 10), (2, [0, 1]))

    def test_engine_polls_rounds(self) -> None:
        """The lean engine's loop asks for POLL_ROUNDS polls per doRead."""
        from kongacme.engine import loop

        calls: list[tuple[Any, ...]] = []

        class Recording:
            def dispatch(self, *args: Any) -> int:
                calls.append(args)
                return 0

        event_loop = loop.EventLoop(object(), compiled=Recording())
        self.addCleanup(event_loop._epoll.close)
        event_loop.doRead()
        self.assertEqual(calls[0][-1], loop.POLL_ROUNDS)
        self.assertGreater(loop.POLL_ROUNDS, 1)
        event_loop.poll_rounds = 1
        event_loop.doRead()
        self.assertEqual(calls[1][-1], 1)


class CompiledStepErrorTests(SynchronousTestCase):
    """
    The compiled steps' socket errors, on a descriptor that is not a socket
    (a pipe: ``recv`` fails with ``ENOTSOCK`` where a socket's reset would
    come with ``EPOLLERR`` and go to Python): handed to the relay as the
    ``OSError`` that ``socket.recv`` would raise, and the pair taken out of
    the table.
    """

    if COMPILED is None:
        skip = "kongacme.engine._steady is not built (no C compiler or Python headers at install)"

    def lost(self, side: str) -> list[tuple[str, Any, int]]:
        epoll = select.epoll()
        self.addCleanup(epoll.close)
        read_end, write_end = os.pipe()
        self.addCleanup(os.close, read_end)
        self.addCleanup(os.close, write_end)
        other = 1000 + read_end  # never reached
        relay = FakeRelay()
        cfd, ufd = (read_end, other) if side == "client" else (other, read_end)
        pair = COMPILED.Pair(relay, cfd, ufd, len, len, len, bytes, lambda: 1.0)
        steady = {cfd: pair, ufd: pair}
        failures: list[Any] = []
        epoll.register(read_end, select.EPOLLIN)
        os.write(write_end, b"x")
        self.assertEqual(COMPILED.dispatch(epoll.fileno(), {}, steady, 8, lambda *a: failures.append(a)), 1)
        self.assertEqual((failures, steady, pair.departures), ([], {}, 1))
        return relay.departures

    def test_client_lost(self) -> None:
        [(what, error, sent)] = self.lost("client")
        self.assertEqual((what, type(error), error.errno, sent), ("CLIENT_LOST", OSError, errno.ENOTSOCK, 0))

    def test_upstream_lost(self) -> None:
        [(what, error, sent)] = self.lost("upstream")
        self.assertEqual((what, type(error), error.errno, sent), ("UPSTREAM_LOST", OSError, errno.ENOTSOCK, 0))


class CompiledStepSessionTests(SynchronousTestCase):
    """
    The client's step on a fake session (what the step asks of one: ``feed``
    takes the record, ``read(size, view)`` writes plaintext into the view
    and says how much) and a socket pair on each side.
    """

    if COMPILED is None:
        skip = "kongacme.engine._steady is not built (no C compiler or Python headers at install)"

    def step(self, seconds: Callable[[], float]) -> tuple[Any, socket.socket, list[bytes]]:
        """One record from the client through a pair whose clock is ``seconds``; the pair, the upstream's end, what was fed."""
        epoll = select.epoll()
        self.addCleanup(epoll.close)
        client, client_end = socket.socketpair()
        upstream, upstream_end = socket.socketpair()
        for sock in (client, client_end, upstream, upstream_end):
            self.addCleanup(sock.close)
        upstream_end.setblocking(False)
        fed: list[bytes] = []

        def read(size: int, view: Any) -> int:
            view[:2] = b"hi"
            return 2

        relay = FakeRelay()
        pair = COMPILED.Pair(relay, client_end.fileno(), upstream.fileno(), fed.append, read, len, bytes, seconds)
        self.pair = pair
        steady = {client_end.fileno(): pair, upstream.fileno(): pair}
        epoll.register(client_end.fileno(), select.EPOLLIN)
        client.send(b"\x17\x03\x03\x00\x03abc")  # one whole record, as far as the step can tell
        failures: list[Any] = []
        self.assertEqual(COMPILED.dispatch(epoll.fileno(), {}, steady, 8, lambda *a: failures.append(a)), 1)
        self.assertEqual((failures, relay.departures), ([], []))
        return pair, upstream_end, fed

    def test_record_relayed(self) -> None:
        """The record is fed whole, its plaintext sent upstream, counted with the clock's time."""
        pair, upstream_end, fed = self.step(lambda: 5.0)
        self.assertEqual((fed, upstream_end.recv(100)), ([b"\x17\x03\x03\x00\x03abc"], b"hi"))
        self.assertEqual((pair.client_steps, pair.take()), (1, (2, 0, 5.0)))

    def test_closed_meanwhile(self) -> None:
        """A pair closed by a call the step made sends nothing more: its descriptors may be gone."""

        def closing() -> float:
            self.pair.close()
            return 5.0

        pair, upstream_end, fed = self.step(closing)
        self.assertFalse(pair.live)
        self.assertRaises(BlockingIOError, upstream_end.recv, 100)


class CompiledAcceptTests(HarnessMixin, SynchronousTestCase):
    """
    ``_steady.accept``, which the engine's listener accepts with where the
    module is built: what ``socket.accept`` gives, non-blocking at once, and
    the listener's handling of its errors.
    """

    binding = "openssl"
    compiled = COMPILED

    if COMPILED is None:
        skip = "kongacme.engine._steady is not built (no C compiler or Python headers at install)"

    def listening(self, family: int, host: str) -> socket.socket:
        sock = socket.socket(family)
        self.addCleanup(sock.close)
        sock.bind((host, 0))
        sock.listen(4)
        sock.setblocking(False)  # as the engine's listener
        return sock

    def test_as_socket_accept(self) -> None:
        """
        A connection's descriptor (non-blocking, close-on-exec) and its
        peer's address as ``socket.accept`` gives it, IPv4 and IPv6; None
        when none is waiting.
        """
        for family, host in [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")]:
            listening = self.listening(family, host)
            self.assertIsNone(COMPILED.accept(listening.fileno()))
            client = socket.create_connection(listening.getsockname()[:2])
            self.addCleanup(client.close)
            fd, peer = COMPILED.accept(listening.fileno())
            accepted = socket.socket(family, socket.SOCK_STREAM, 0, fd)
            self.addCleanup(accepted.close)
            self.assertEqual(peer, client.getsockname())
            self.assertEqual(accepted.getpeername(), client.getsockname())
            self.assertFalse(os.get_blocking(fd))
            self.assertFalse(os.get_inheritable(fd))
            self.assertIsNone(COMPILED.accept(listening.fileno()))

    def test_errors(self) -> None:
        """The errors socket.accept would raise, of the errno's subclass; a negative descriptor is refused."""
        r, w = os.pipe()
        self.addCleanup(os.close, r)
        self.addCleanup(os.close, w)
        with self.assertRaises(OSError) as raised:
            COMPILED.accept(r)
        self.assertEqual(raised.exception.errno, errno.ENOTSOCK)
        closed = os.dup(r)
        os.close(closed)
        with self.assertRaises(OSError) as raised:
            COMPILED.accept(closed)
        self.assertEqual(raised.exception.errno, errno.EBADF)
        self.assertRaises(ValueError, COMPILED.accept, -1)
        self.assertRaises(TypeError, COMPILED.accept, "3")

    def test_listener_goes_on_after_transient_errors(self) -> None:
        """
        The listener's accepting: an error of one connection only (here
        ECONNABORTED) is passed over and the next connection served; any
        other (EMFILE) is logged and ends this round, the next event
        accepting again. The limit counts none of the failed accepts.
        """
        harness = self.harness
        port = harness.lean_port
        accept = port._accept
        failures = [ConnectionAbortedError(errno.ECONNABORTED, "aborted"), OSError(errno.EMFILE, "too many")]

        def failing(fd: int) -> Any:
            if failures:
                raise failures.pop(0)
            return accept(fd)

        port._accept = failing  # type: ignore[method-assign]
        logged = LogCapture("kongacme.engine.listener").start(self)
        with harness.connection() as start:
            client, upstream = harness.connect([], [])
            self.assertEqual(failures, [])
            self.assertIn("accept failed", logged.events[0]["log_format"])
            self.assertEqual(os.strerror(errno.EMFILE), logged.events[0]["error"])
            self.exchange(client, upstream, b"GET /", b"reply")
            self.end_both(client, upstream)
            harness.assert_clean_end(self, start)
