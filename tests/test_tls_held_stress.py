"""
Stress tests for handshakes held by an ``IHandshakeGate`` in
kongacme.tls.protocol: 500 real TLS clients (Python's ssl, in threads) over
real sockets, held by a gate the test controls and released in every way a
gate can release them, in bounded concurrent batches.
"""

from __future__ import annotations

import os
import random
import socket
import ssl

from cryptography.hazmat.primitives.serialization import Encoding
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks, succeed
from twisted.internet.protocol import Factory
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import TestCase

from kongacme.testing import TestCA
from kongacme.tls.cache import CertificateCache
from kongacme.tls.context import ContextBuilder
from kongacme.tls.fallback import generate_self_signed
from kongacme.tls.protocol import TLSServerFactory

from tests import tlsclients
from tests.test_tls_protocol import EchoOrHTTP

#: Handshakes in all, and how many run at once.
TOTAL = 500
BATCH = 50


class ControlledGate:
    """
    Holds every handshake; the test releases them.

    - ``h<n>.ready.test`` (its certificate is in the cache): an
      already-fired Deferred, released at once;
    - ``h<n>.held.test``: a Deferred fired later by :meth:`release_all`, in
      random order, some directly, some from a reactor turn of their own.
    """

    def __init__(self) -> None:
        self.held: list[Deferred] = []
        self.asked = 0

    def before_handshake(self, server_name: str | None) -> Deferred | None:
        self.asked += 1
        if server_name is not None and server_name.endswith(".ready.test"):
            return succeed(None)
        waiting: Deferred = Deferred()
        self.held.append(waiting)
        return waiting

    def release_all(self, rng: random.Random) -> None:
        held, self.held = self.held, []
        rng.shuffle(held)
        for i, waiting in enumerate(held):
            if i % 2:
                waiting.callback(None)
            else:
                reactor.callLater(0, waiting.callback, None)


def verified_handshake_blocking(port: int, server_name: str, context: ssl.SSLContext, payload: bytes) -> dict:
    """
    A verified handshake, then ``payload`` echoed. A third of the clients
    (by name) send the ClientHello's first 7 bytes in a segment of their
    own, so the hello may be read in pieces.
    """
    number = int(server_name.split(".")[0][1:])
    if number % 3:
        return tlsclients.handshake_blocking(port, server_name, context, payload=payload, timeout=30)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        first = True
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                data = outgoing.read()
                if first and data:
                    first = False
                    sock.sendall(data[:7])
                    data = data[7:]
                if data:
                    sock.sendall(data)
                received = sock.recv(65536)
                if not received:
                    raise ConnectionError("closed during the handshake")
                incoming.write(received)
        tls.write(payload)
        sock.sendall(outgoing.read())
        echo = b""
        while len(echo) < len(payload):
            try:
                echo += tls.read(65536)
            except ssl.SSLWantReadError:
                data = outgoing.read()
                if data:
                    sock.sendall(data)
                received = sock.recv(65536)
                if not received:
                    break
                incoming.write(received)
        return {"der": tls.getpeercert(binary_form=True), "echo": echo}


class HeldHandshakeStressTests(TestCase):
    """
    Tests for many handshakes held and released by the gate at once.
    """

    timeout = 600

    def setUp(self):
        tmp = self.mktemp()
        os.makedirs(tmp)
        ca = TestCA.create()
        self.cafile = ca.write_ca(os.path.join(tmp, "ca.pem"))
        self.cache = CertificateCache(generate_self_signed())
        ready = ca.issue(["*.ready.test"])
        self.cache.put(ready)
        self.wildcard = ca.issue(["*.held.test"])
        self.leaf = {
            "ready": ready.chain[0].public_bytes(Encoding.DER),
            "held": self.wildcard.chain[0].public_bytes(Encoding.DER),
        }
        wrapped = Factory.forProtocol(EchoOrHTTP)
        wrapped.hellos = []
        self.gate = ControlledGate()
        self.factory = TLSServerFactory(
            self.cache, ContextBuilder(reactor), wrapped, reactor, gate=self.gate, handshake_timeout=30
        )
        port = reactor.listenTCP(0, self.factory, interface="127.0.0.1", backlog=BATCH * 2)
        self.addCleanup(port.stopListening)
        self.port = port.getHost().port
        self.pool = ThreadPool(minthreads=0, maxthreads=BATCH, name="held-stress")
        self.pool.start()
        self.addCleanup(self.pool.stop)

    @inlineCallbacks
    def test_500_held_handshakes_all_verify(self):
        """
        500 handshakes through the gate in batches of 50: a quarter released
        at once (their certificate is in the cache), the rest held until the
        whole batch is, then released in random order once the certificate
        arrives in the cache. Every one completes, verifies against the
        test CA with the expected certificate and echoes its payload; the
        held ones are counted as held then issued.
        """
        rng = random.Random(9)
        context = tlsclients.client_context(self.cafile)
        results: list[dict] = []
        for start in range(0, TOTAL, BATCH):
            names = [name_for(n) for n in range(start, start + BATCH)]
            asked_before = self.gate.asked
            clients = [
                deferToThreadPool(
                    reactor, self.pool, verified_handshake_blocking, self.port, name, context, name.encode()
                )
                for name in names
            ]
            while self.gate.asked < asked_before + BATCH:
                yield deferLater(reactor, 0.01, lambda: None)
            self.cache.put(self.wildcard)
            self.gate.release_all(rng)
            batch = yield gatherResults(clients, consumeErrors=True)
            results.extend(batch)
            self.cache.remove("*.held.test")
        self.assertEqual(len(results), TOTAL)
        self.assertEqual([r["der"] for r in results], [self.leaf[name_for(n).split(".")[1]] for n in range(TOTAL)])
        self.assertEqual([r["echo"] for r in results], [name_for(n).encode() for n in range(TOTAL)])
        # An already-fired Deferred from the gate counts as held too.
        self.assertEqual(self.factory.handshakes["held_then_issued"], TOTAL)
        self.assertEqual(self.factory.handshakes["held_then_fallback"], 0)


def name_for(n: int) -> str:
    """Client ``n``'s server name: a quarter are ready, the rest held."""
    return "h%d.%s.test" % (n, "ready" if n % 4 == 0 else "held")
