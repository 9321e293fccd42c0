"""
Tests for ``workers: 2`` (kongacme.workers wired by kongacme.service) with
real processes: a master and two workers sharing the TLS listener,
certificates from the master, on-demand orders through the master's gate,
reload, supervision and shutdown.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import signal
import threading
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor, threads
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import LoopingCall, deferLater
from twisted.trial.unittest import TestCase

from kongacme.testing import TestCA, write_certified_key

from tests import tlsclients
from tests.daemonproc import Daemon, ShowsDaemonOutput, free_port
from tests.test_daemon_acme import AcmeDaemonMixin


class Tagged(Protocol):
    """Echoes with the factory's tag in front: tells which upstream answered."""

    def dataReceived(self, data):
        self.transport.write(self.factory.tag + data)


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie waiting to be reaped."""
    try:
        with open("/proc/%d/stat" % (pid,)) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def sleep(seconds: float):
    return deferLater(reactor, seconds, lambda: None)


#: What the slow upstream sends: 10 MB.
DOWNLOAD = bytes(range(256)) * 4096 * 10


class SlowDownload(Protocol):
    """Sends :data:`DOWNLOAD` in 256 KiB pieces every 50 ms (about 2 s) on the first bytes received, then closes."""

    def dataReceived(self, data):
        if getattr(self, "_sending", None) is not None:
            return
        self._offset = 0
        self._sending = LoopingCall(self._piece)
        self._sending.start(0.05)

    def _piece(self):
        piece = DOWNLOAD[self._offset : self._offset + 256 * 1024]
        self._offset += len(piece)
        if piece:
            self.transport.write(piece)
        else:
            self._sending.stop()
            self.transport.loseConnection()

    def connectionLost(self, reason):
        if getattr(self, "_sending", None) is not None and self._sending.running:
            self._sending.stop()


class WorkersDaemonMixin:
    """
    A daemon with ``workers: 2`` and static certificates, and what tests ask
    it (for a trial ``TestCase``).
    """

    timeout = 120

    @inlineCallbacks
    def start(self, workers=2, config=None, names=()):
        """
        Start the daemon with a static certificate for a.test and b.test,
        and one more per name of ``names``; ``config`` is merged in.
        """
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        ca = TestCA.create()
        self.cafile = ca.write_ca(os.path.join(self.dir, "ca.pem"))
        cert, key = write_certified_key(ca.issue(["a.test", "b.test"]), self.dir, "ab")
        certificates = [{"cert": cert, "key": key}]
        for name in names:
            more, more_key = write_certified_key(ca.issue([name]), self.dir, name)
            certificates.append({"cert": more, "key": more_key})
        self.tls_port, self.admin_port = free_port(), free_port()
        self.upstreams = {}
        for tag in (b"A", b"B"):
            factory = Factory.forProtocol(Tagged)
            factory.tag = tag
            port = reactor.listenTCP(0, factory, interface="127.0.0.1")
            self.addCleanup(port.stopListening)
            self.upstreams[tag] = port.getHost().port
        self.daemon = Daemon(
            self.dir,
            {
                "workers": workers,
                "state_dir": os.path.join(self.dir, "state"),
                "certificates": certificates,
                "default_upstream": "127.0.0.1:%d" % (self.upstreams[b"A"],),
                "listen": {
                    "tls": ["tcp:%d:interface=127.0.0.1" % self.tls_port],
                    "http": ["tcp:%d:interface=127.0.0.1" % free_port()],
                    "admin": ["tcp:%d:interface=127.0.0.1" % self.admin_port],
                },
                **(config or {}),
            },
        )
        self.addCleanup(self.daemon.stop)
        yield self.daemon.start(self.tls_port)
        yield self.daemon.wait_for("accepting:", count=workers)

    def status(self):
        def get():
            with urllib.request.urlopen("http://127.0.0.1:%d/status" % (self.admin_port,), timeout=5) as response:
                return json.loads(response.read())

        return threads.deferToThread(get)

    def metrics(self):
        def get():
            with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % (self.admin_port,), timeout=5) as response:
                return response.read().decode()

        return threads.deferToThread(get)

    @inlineCallbacks
    def handshakes_per_worker(self, total):
        """Per-worker handshake counts once the workers have reported ``total`` in all."""
        for _ in range(100):
            status = yield self.status()
            per = {
                slot: sum(counters["handshakes"].values()) for slot, counters in status["workers"]["per_worker"].items()
            }
            if sum(per.values()) >= total:
                return per
            yield sleep(0.1)
        self.fail("workers reported %r, expected %d handshakes in all" % (per, total))

    def burst(self, name, count, parallel=4, port=None):
        """``count`` verified handshakes for ``name``, ``parallel`` at a time; their echoes."""
        context = tlsclients.client_context(self.cafile)
        port = port or self.tls_port

        def one(_):
            return tlsclients.handshake_blocking(port, name, context)["echo"]

        def batch(i):
            return gatherResults([threads.deferToThread(one, None) for _ in range(min(parallel, count - i))])

        @inlineCallbacks
        def run():
            echoes = []
            for i in range(0, count, parallel):
                echoes.extend((yield batch(i)))
            return echoes

        return run()

    @inlineCallbacks
    def worker_pids(self):
        """``{slot: pid}`` of both workers, once both have reported."""
        for _ in range(50):
            status = yield self.status()
            per = status["workers"]["per_worker"]
            if len(per) == 2:
                return {slot: counters["pid"] for slot, counters in per.items()}
            yield sleep(0.1)
        self.fail("workers did not report: %r" % (status,))

    @inlineCallbacks
    def download_underway(self, progress):
        """
        Start a verified download of :data:`DOWNLOAD` from a.test; once its
        first MiB arrived, a one-element list: the Deferred of (bytes
        received, their SHA-256) when it ends (``progress["bytes"]`` counts
        meanwhile; in a list, as a Deferred result would be waited for).
        """
        context = tlsclients.client_context(self.cafile)
        underway = threading.Event()

        def download():
            digest = hashlib.sha256()
            with socket.create_connection(("127.0.0.1", self.tls_port), timeout=30) as raw:
                with context.wrap_socket(raw, server_hostname="a.test") as tls:
                    tls.sendall(b"GET")
                    while True:
                        chunk = tls.recv(65536)
                        if not chunk:
                            break
                        digest.update(chunk)
                        progress["bytes"] += len(chunk)
                        if progress["bytes"] >= 1024 * 1024:
                            underway.set()
            return progress["bytes"], digest.hexdigest()

        downloading = threads.deferToThread(download)
        while not underway.is_set() and not downloading.called:
            yield sleep(0.01)
        return [downloading]

    @inlineCallbacks
    def assert_gone(self, pids, seconds=2.0):
        """Fails unless every process of ``pids`` is gone within ``seconds``."""
        for _ in range(int(seconds * 10)):
            if not any(alive(pid) for pid in pids):
                break
            yield sleep(0.1)
        self.assertEqual([pid for pid in pids if alive(pid)], [])

class WorkersDaemonTests(WorkersDaemonMixin, ShowsDaemonOutput, TestCase):
    """
    Tests for a daemon with ``workers: 2`` and static certificates.
    """

    @inlineCallbacks
    def test_connections_land_on_both_workers(self):
        """
        Two workers start; 40 verified handshakes with the static certificate
        are proxied (echoed by the upstream) and spread over both workers,
        as their counters in /status and /metrics say, the lean engine's
        paths included.
        """
        yield self.start()
        echoes = yield self.burst("a.test", 40)
        self.assertEqual(set(echoes), {b"Aping"})
        per = yield self.handshakes_per_worker(40)
        self.assertEqual(sorted(per), ["1", "2"])
        self.assertEqual(sum(per.values()), 40)
        self.assertTrue(all(count > 0 for count in per.values()), per)
        metrics = yield self.metrics()
        self.assertIn('kongacme_tls_handshakes_total{outcome="cached"} 40.0', metrics)
        for slot in ("1", "2"):
            self.assertIn('kongacme_worker_tls_handshakes_total{outcome="cached",worker="%s"} %d.0' % (slot, per[slot]),
                          metrics)
        # Each connection took one of the lean engine's (the default) two
        # paths: handed over while the worker fetches the name's
        # certificate from the master, its own once the worker holds it.
        samples = [s for f in text_string_to_metric_families(metrics) for s in f.samples]
        paths = {s.labels["path"]: s.value for s in samples if s.name == "kongacme_engine_connections_total"}
        self.assertEqual(sorted(paths), ["handed_over", "lean"])
        self.assertEqual(sum(paths.values()), 40)
        self.assertGreater(paths["lean"], 0)
        per_path: dict = {}
        for s in samples:
            if s.name == "kongacme_worker_engine_connections_total":
                per_path.setdefault(s.labels["worker"], {})[s.labels["path"]] = s.value
        self.assertEqual({slot: sum(counts.values()) for slot, counts in per_path.items()}, per)
        self.assertEqual(sum(counts["lean"] for counts in per_path.values()), paths["lean"])

    @inlineCallbacks
    def test_bounded_worker_cache(self):
        """
        With tls.cache_size 2 and five static certificates, five names
        handshake and verify repeatedly through two workers: each worker
        holds at most two, fetching the others from the master as they
        come back.
        """
        names = ["n%d.test" % (i,) for i in range(5)]
        yield self.start(config={"tls": {"cache_size": 2}}, names=names)
        context = tlsclients.client_context(self.cafile)

        def rounds():
            served = []
            for _ in range(6):
                for name in names:
                    served.append((name, tuple(tlsclients.handshake_blocking(self.tls_port, name, context)["names"])))
            return served

        served = yield threads.deferToThread(rounds)
        self.assertEqual(served, [(name, (name,)) for _ in range(6) for name in names])
        yield self.handshakes_per_worker(30)
        status = yield self.status()
        per = status["workers"]["per_worker"]
        self.assertTrue(all(counters["certificates"] <= 2 for counters in per.values()), per)
        # Every name came back after others had pushed it out: fetched again.
        self.assertGreater(sum(counters["certificate_fetches"] for counters in per.values()), 10, per)
        self.assertGreater(sum(counters["certificate_evictions"] for counters in per.values()), 0, per)

    @inlineCallbacks
    def test_reload_new_route_reaches_every_worker(self):
        """
        SIGHUP with a new route for b.test: every worker proxies b.test to
        the new upstream (enough connections to reach both).
        """
        yield self.start()
        before = yield self.burst("b.test", 8)
        self.assertEqual(set(before), {b"Aping"})
        seen = yield self.handshakes_per_worker(8)
        self.daemon.config["routes"] = [{"hosts": ["b.test"], "upstream": "127.0.0.1:%d" % self.upstreams[b"B"]}]
        self.daemon.write()
        self.daemon.signal(signal.SIGHUP)
        yield self.daemon.wait_for("configuration reloaded")
        # Configure travels on each worker's channel before any later handshake is accepted there.
        yield sleep(0.5)
        after = yield self.burst("b.test", 40)
        self.assertEqual(set(after), {b"Bping"})
        per = yield self.handshakes_per_worker(48)
        self.assertTrue(all(per[slot] > seen.get(slot, 0) for slot in ("1", "2")), (seen, per))

    @inlineCallbacks
    def test_reload_changing_workers_rejected(self):
        """A reload changing workers is rejected with the reason; the daemon keeps serving."""
        yield self.start()
        self.daemon.config["workers"] = 3
        self.daemon.write()
        self.daemon.signal(signal.SIGHUP)
        yield self.daemon.wait_for("workers: changing the number of workers takes a restart")
        status = yield self.status()
        self.assertEqual(status["workers"]["running"], [1, 2])
        echoes = yield self.burst("a.test", 4)
        self.assertEqual(set(echoes), {b"Aping"})

    @inlineCallbacks
    def test_killed_worker_replaced(self):
        """
        kill -9 one worker while four clients loop verified handshakes for
        a cached name: it is replaced (new pid, both running) and at least
        99.5 % of the handshakes succeed.
        """
        yield self.start()
        old_pid = (yield self.worker_pids())["1"]
        context = tlsclients.client_context(self.cafile)
        results = {"ok": 0, "failed": 0}
        lock = threading.Lock()
        stop = time.monotonic() + 10.0

        def loop():
            while time.monotonic() < stop:
                try:
                    tlsclients.handshake_blocking(self.tls_port, "a.test", context, timeout=5)
                    outcome = "ok"
                except (OSError, ValueError):  # ValueError: the ssl module's "handshake not done yet"
                    outcome = "failed"
                with lock:
                    results[outcome] += 1

        clients = gatherResults([threads.deferToThread(loop) for _ in range(4)])
        yield sleep(2.0)
        os.kill(old_pid, signal.SIGKILL)
        yield self.daemon.wait_for("worker 1 (pid %d) was killed by signal 9" % (old_pid,))
        yield self.daemon.wait_for("worker 1 started", count=2)
        yield clients
        status = yield self.status()
        self.assertEqual(status["workers"]["running"], [1, 2])
        self.assertEqual(status["workers"]["restarts"], 1)
        new_pid = status["workers"]["per_worker"]["1"]["pid"]
        self.assertNotEqual(new_pid, old_pid)
        total = results["ok"] + results["failed"]
        self.assertGreater(total, 100)
        self.assertGreaterEqual(results["ok"] / total, 0.995, results)
        # The replacement serves too.
        echoes = yield self.burst("a.test", 20)
        self.assertEqual(set(echoes), {b"Aping"})

    @inlineCallbacks
    def test_master_killed_workers_exit(self):
        """kill -9 of the master: no worker is left 5 s later."""
        yield self.start()
        pids = list((yield self.worker_pids()).values())
        self.assertTrue(all(alive(pid) for pid in pids))
        self.daemon.signal(signal.SIGKILL)
        yield self.daemon.collector.ended
        yield self.assert_gone(pids, seconds=5.0)

    @inlineCallbacks
    def test_sigterm_stops_every_process(self):
        """SIGTERM to the master drains the workers; every process is gone, the master last."""
        yield self.start()
        pids = list((yield self.worker_pids()).values())
        self.daemon.signal(signal.SIGTERM)
        yield self.daemon.collector.ended
        output = self.daemon.output
        self.assertIn("draining 2 worker(s)", output)
        for slot in (1, 2):
            self.assertIn("worker %d (pid %d) exited with status 0" % (slot, pids[slot - 1]), output)
        self.assertLess(output.index("exited with status 0"), output.index("Server Shut Down."))
        yield self.assert_gone(pids)


    @inlineCallbacks
    def test_sigterm_download_in_flight_completes(self):
        """
        SIGTERM to the master while a 10 MB download is in flight through a
        worker: the download completes (every byte, in order), then every
        process is gone; the drain deadline is workers_drain_timeout.
        """
        port = reactor.listenTCP(0, Factory.forProtocol(SlowDownload), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        yield self.start(config={
            "workers_drain_timeout": 30,
            "routes": [{"hosts": ["a.test"], "upstream": "127.0.0.1:%d" % (port.getHost().port,)}],
        })
        pids = list((yield self.worker_pids()).values())
        progress = {"bytes": 0}
        [downloading] = yield self.download_underway(progress)
        self.daemon.signal(signal.SIGTERM)
        at_signal = progress["bytes"]
        received, digest = yield downloading
        self.assertLess(at_signal, len(DOWNLOAD))
        self.assertEqual(received, len(DOWNLOAD))
        self.assertEqual(digest, hashlib.sha256(DOWNLOAD).hexdigest())
        yield self.daemon.collector.ended
        self.assertIn("draining 2 worker(s), up to 30 s", self.daemon.output)
        yield self.assert_gone(pids)

    @inlineCallbacks
    def test_drain_deadline_cuts_idle_connection(self):
        """
        With workers_drain_timeout 1, a connection that never ends does not
        keep the workers: SIGTERM drains for 1 s, the client sees its
        connection closed, and every process is gone.
        """
        yield self.start(config={"workers_drain_timeout": 1})
        pids = list((yield self.worker_pids()).values())
        context = tlsclients.client_context(self.cafile)

        def connect():
            # In a thread: the upstream answering runs in this reactor.
            raw = socket.create_connection(("127.0.0.1", self.tls_port), timeout=20)
            tls = context.wrap_socket(raw, server_hostname="a.test")
            tls.sendall(b"ping")
            return tls, tls.recv(100)

        tls, echo = yield threads.deferToThread(connect)
        self.addCleanup(tls.close)
        self.assertEqual(echo, b"Aping")
        self.daemon.signal(signal.SIGTERM)
        closed = yield threads.deferToThread(tls.recv, 100)
        self.assertEqual(closed, b"")
        yield self.daemon.collector.ended
        self.assertIn("draining 2 worker(s), up to 1 s", self.daemon.output)
        yield self.assert_gone(pids)


class WorkersListenerReloadTests(WorkersDaemonMixin, ShowsDaemonOutput, TestCase):
    """
    Tests for a reload that changes ``listen.tls`` with ``workers: 2``: new
    sockets first, a new generation of workers on them, the old one drained.
    """

    def listen(self, *ports):
        return ["tcp:%d:interface=127.0.0.1" % (port,) for port in ports]

    @inlineCallbacks
    def reload_listeners(self, *ports, generation):
        """Reload with TLS listeners on ``ports``; wait for the ``generation``-th generation to accept."""
        self.daemon.config["listen"]["tls"] = self.listen(*ports)
        self.daemon.write()
        self.daemon.signal(signal.SIGHUP)
        yield self.daemon.wait_for("configuration reloaded", count=generation - 1)
        yield self.daemon.wait_for("accepting:", count=2 * generation)

    @inlineCallbacks
    def serves_on_every_worker(self, port, name):
        """40 verified handshakes on ``port`` are proxied, and each current worker took some."""
        before = yield self.handshakes_per_worker(0)
        echoes = yield self.burst(name, 40, port=port)
        self.assertEqual(set(echoes), {b"Aping"})
        per = yield self.handshakes_per_worker(sum(before.get(slot, 0) for slot in ("1", "2")) + 40)
        self.assertTrue(all(per[slot] > before.get(slot, 0) for slot in ("1", "2")), (before, per))

    @inlineCallbacks
    def test_add_then_remove_a_port(self):
        """
        A reload adding a second TLS port: a new generation of workers
        serves both ports (verified, on every worker) and the old one exits;
        the first port never stopped serving: two clients looping verified
        handshakes on it through the reload all succeed. A reload removing
        the first port: it is closed once the previous generation stopped
        accepting, and the second keeps serving.
        """
        yield self.start()
        old = yield self.worker_pids()
        second = free_port()
        done = threading.Event()
        looping = gatherResults([threads.deferToThread(self.handshakes_until, done) for _ in range(2)])
        yield sleep(0.5)
        yield self.reload_listeners(self.tls_port, second, generation=2)
        yield self.daemon.wait_for("of the previous generation exited with status 0", count=2)
        done.set()
        outcomes = yield looping
        self.assertEqual([failed for _, failed in outcomes], [[], []])
        self.assertTrue(all(ok > 0 for ok, _ in outcomes), outcomes)
        new = yield self.worker_pids()
        self.assertFalse(set(old.values()) & set(new.values()), (old, new))
        status = yield self.status()
        self.assertEqual((status["workers"]["running"], status["workers"]["restarts"]), ([1, 2], 0))
        for port in (second, self.tls_port):
            yield self.serves_on_every_worker(port, "a.test")

        yield self.reload_listeners(second, generation=3)
        yield self.daemon.wait_for("tls listener on %s closed" % (self.listen(self.tls_port)[0],))
        yield self.daemon.wait_for("of the previous generation exited with status 0", count=4)
        with self.assertRaises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", self.tls_port), timeout=5).close()
        yield self.serves_on_every_worker(second, "b.test")
        self.assertNotIn("Traceback", self.daemon.output)
        self.assertNotIn("Unhandled", self.daemon.output)

    def handshakes_until(self, done):
        """Verified handshakes on the first TLS port until ``done`` is set: (count, the errors)."""
        context = tlsclients.client_context(self.cafile)
        ok, failed = 0, []
        while not done.is_set():
            try:
                tlsclients.handshake_blocking(self.tls_port, "a.test", context, timeout=10)
                ok += 1
            except (OSError, ValueError) as e:
                failed.append(repr(e))
        return ok, failed

    @inlineCallbacks
    def test_download_in_flight_on_old_generation(self):
        """
        A 10 MB download through a worker when a reload adds a TLS port:
        the old worker keeps relaying it to the end (every byte, in order)
        while the new generation accepts, then exits.
        """
        port = reactor.listenTCP(0, Factory.forProtocol(SlowDownload), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        yield self.start(config={
            "workers_drain_timeout": 30,
            "routes": [{"hosts": ["a.test"], "upstream": "127.0.0.1:%d" % (port.getHost().port,)}],
        })
        progress = {"bytes": 0}
        [downloading] = yield self.download_underway(progress)
        second = free_port()
        yield self.reload_listeners(self.tls_port, second, generation=2)
        at_reload = progress["bytes"]
        echoes = yield self.burst("b.test", 4, port=second)
        self.assertEqual(set(echoes), {b"Aping"})
        status = yield self.status()
        draining = status["workers"]["previous_generation"]
        self.assertTrue(1 <= len(draining) <= 2, draining)
        received, digest = yield downloading
        self.assertLess(at_reload, len(DOWNLOAD))
        self.assertEqual(received, len(DOWNLOAD))
        self.assertEqual(digest, hashlib.sha256(DOWNLOAD).hexdigest())
        yield self.daemon.wait_for("of the previous generation exited with status 0", count=2)
        status = yield self.status()
        self.assertEqual(status["workers"]["previous_generation"], [])
        self.assertFalse(set(draining) & set((yield self.worker_pids()).values()))

    @inlineCallbacks
    def test_busy_port_rejected(self):
        """
        A reload adding a TLS port something else holds is rejected with
        the reason; no new generation starts and the old port keeps serving
        on the same workers.
        """
        yield self.start()
        old = yield self.worker_pids()
        holder = socket.socket()
        self.addCleanup(holder.close)
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        self.daemon.config["listen"]["tls"] = self.listen(self.tls_port, holder.getsockname()[1])
        self.daemon.write()
        self.daemon.signal(signal.SIGHUP)
        yield self.daemon.wait_for("reload rejected")
        self.assertIn("Address already in use", self.daemon.output)
        self.assertNotIn("new generation", self.daemon.output)
        echoes = yield self.burst("a.test", 8)
        self.assertEqual(set(echoes), {b"Aping"})
        self.assertEqual((yield self.worker_pids()), old)


class WorkersOnDemandTests(AcmeDaemonMixin, TestCase):
    """
    Tests for on-demand issuance with ``workers: 2`` against a real Pebble.
    """

    @inlineCallbacks
    def test_twenty_clients_one_order(self):
        """
        Twenty simultaneous handshakes for one new name, spread over both
        workers, give exactly one order at the CA and twenty verified
        certificates.
        """
        yield self.start(config={"workers": 2})
        yield self.daemon.wait_for("accepting:", count=2)
        results = yield gatherResults(
            [tlsclients.handshake(self.tls_port, "burst.example.test", self.verified(), payload=b"") for _ in range(20)]
        )
        self.assertEqual({tuple(r["names"]) for r in results}, {("burst.example.test",)})
        self.assertEqual(self.orders("burst.example.test"), 1)
        self.assertEqual(self.daemon.output.count("ordering a certificate for "), 1)
        served = {}
        for _ in range(50):
            status = yield WorkersDaemonTests.status(self)
            served = {slot: counters["handshakes"] for slot, counters in status["workers"]["per_worker"].items()}
            if sum(sum(counts.values()) for counts in served.values()) == 20:
                break
            yield sleep(0.1)
        # Both workers served some; the first ones were held for the order.
        self.assertEqual(sorted(served), ["1", "2"])
        self.assertTrue(all(sum(counts.values()) > 0 for counts in served.values()), served)
        self.assertEqual(sum(sum(counts.values()) for counts in served.values()), 20, served)
        self.assertGreater(sum(counts.get("held_then_issued", 0) for counts in served.values()), 0, served)
