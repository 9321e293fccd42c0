"""
Tests for the daemon's listeners as users run it (a real ``twistd -n
kongacme`` process): connection limits (kongacme.connlimit) with real
clients — connections beyond a cap wait in the kernel backlog, the Admin
port cannot starve TLS, no EMFILE flood at the open-file limit — and a
SIGHUP that moves a listener to a port already taken.
"""

from __future__ import annotations

import json
import resource
import socket

from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests import tlsclients
from tests.daemonproc import ShowsDaemonOutput
from tests.test_daemon import static_daemon
from tests.test_web_metrics import sample_value, scrape_families


def endpoint(port: int) -> str:
    return "tcp:%d:interface=127.0.0.1" % (port,)


def open_tls(port: int, cafile: str, name: str = "static.test", timeout: float = 15.0):
    """
    Connect and handshake (blocking; for a thread), send ``hold`` and read
    the echo; the TLS socket stays open.
    """
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    tls = tlsclients.client_context(cafile).wrap_socket(raw, server_hostname=name)
    tls.sendall(b"hold")
    echo = b""
    while len(echo) < len(b"A:hold"):
        chunk = tls.recv(100)
        if not chunk:
            break
        echo += chunk
    return tls, echo


def connect_nowait(port: int) -> socket.socket:
    """A non-blocking connect: the socket may wait in the listener's backlog (or SYN queue)."""
    s = socket.socket()
    s.setblocking(False)
    s.connect_ex(("127.0.0.1", port))
    return s


class DaemonFixture:
    """
    A daemon with a static certificate for static.test routed to an echo upstream.

    :cvar workers: the daemon's ``workers`` (the ``…WorkersTests``
        subclasses run with 2).
    """

    timeout = 120
    workers = 1

    @inlineCallbacks
    def start_daemon(self, limits: dict | None = None, extra: dict | None = None):
        config: dict = {"tls": {"handshake_timeout": 30}, "workers": self.workers}
        if limits is not None:
            config["limits"] = limits
        config.update(extra or {})
        yield static_daemon(self, **config).start(self.tls_port)
        if self.workers > 1:
            yield self.daemon.wait_for("accepting:", count=self.workers)

    def hold(self, sockets):
        for s in sockets:
            self.addCleanup(s.close)
        return sockets

    @inlineCallbacks
    def scrape(self):
        out, err, code = yield tlsclients.run("/usr/bin/curl", "-sS", "http://127.0.0.1:%d/metrics" % self.admin_port)
        self.assertEqual(code, 0, err)
        return scrape_families(out)

    @inlineCallbacks
    def handshake_ok(self, port=None):
        """A cached name verifies and its upstream answers."""
        result = yield tlsclients.handshake(port or self.tls_port, "static.test", tlsclients.client_context(self.cafile),
                                            payload=b"ok")
        self.assertEqual(result["names"], ["static.test"])
        return result


class ConnectionLimitTests(DaemonFixture, ShowsDaemonOutput, TestCase):
    """
    Tests for limits.* in a running daemon.
    """

    @inlineCallbacks
    def test_tls_cap_backlog(self):
        """
        With limits.tls 3, three TLS connections are served and two more
        wait unaccepted in the backlog (the metrics say 3 in use, paused);
        once the first three close, the waiting two complete their
        handshakes. One warning line when the cap is hit, one when it
        clears. With workers the limit is each worker's: each serves three
        and stops accepting (a line each), and the two more wait in the
        shared backlog.
        """
        yield self.start_daemon({"tls": 3})
        held = []
        for _ in range(3 * self.workers):
            tls, echo = yield deferToThread(open_tls, self.tls_port, self.cafile)
            self.addCleanup(tls.close)
            self.assertEqual(echo, b"A:hold")
            held.append(tls)
        yield self.daemon.wait_for("tls listener at its limit of 3 connections", count=self.workers)
        # Two more clients: the kernel completes their connections, the
        # daemon does not accept them; their handshakes wait.
        waiting = [deferToThread(open_tls, self.tls_port, self.cafile) for _ in range(2)]
        if self.workers > 1:
            yield self.worker_connections({"1": 3, "2": 3})
            # The master's listener="tls" rows are the workers' summed.
            families = yield self.scrape()
            self.assertEqual(sample_value(families, "kongacme_connections", listener="tls"), 6)
            self.assertEqual(sample_value(families, "kongacme_connections_limit", listener="tls"), 6)
            self.assertEqual(sample_value(families, "kongacme_listener_paused", listener="tls"), 1)
            yield deferLater(reactor, 0.5, lambda: None)
        else:
            yield self.single_process_paused()
        self.assertFalse(any(d.called for d in waiting))
        for tls in held:
            tls.close()
        results = yield gatherResults(waiting)
        for tls, echo in results:
            self.assertEqual(echo, b"A:hold")
            tls.close()
        yield self.daemon.wait_for("tls listener below its limit again", count=self.workers)
        if self.workers > 1:
            yield self.worker_connections({"1": 0, "2": 0})
            families = yield self.scrape()
            self.assertEqual(sample_value(families, "kongacme_connections", listener="tls"), 0)
            self.assertEqual(sample_value(families, "kongacme_listener_paused", listener="tls"), 0)
        else:
            families = yield self.scrape()
            self.assertEqual(sample_value(families, "kongacme_listener_paused", listener="tls"), 0)
        self.assertEqual(self.daemon.output.count("tls listener at its limit"), self.workers)
        self.assertEqual(self.daemon.output.count("tls listener below its limit again"), self.workers)

    @inlineCallbacks
    def single_process_paused(self):
        """The metrics of one process with 3 TLS connections at a limit of 3."""
        families = yield self.scrape()
        self.assertEqual(sample_value(families, "kongacme_connections", listener="tls"), 3)
        self.assertEqual(sample_value(families, "kongacme_connections_limit", listener="tls"), 3)
        self.assertEqual(sample_value(families, "kongacme_listener_paused", listener="tls"), 1)
        self.assertEqual(sample_value(families, "kongacme_listener_paused", listener="admin"), 0)
        self.assertEqual(sample_value(families, "kongacme_connections_refused_total", listener="tls"), 0)

    @inlineCallbacks
    def worker_connections(self, expected):
        """The workers' open TLS connections in /metrics, once they are ``expected``."""
        for _ in range(50):
            families = yield self.scrape()
            samples = families.get("kongacme_worker_connections")
            found = {s.labels.get("worker"): s.value for s in (samples.samples if samples is not None else ())}
            if found == expected:
                return found
            yield deferLater(reactor, 0.1, lambda: None)
        self.fail("workers' connections %r, expected %r" % (found, expected))

    @inlineCallbacks
    def test_admin_flood_does_not_starve_tls(self):
        """
        Idle connections flooding the Admin port stop at its cap (64 by
        default) while a cached name keeps verifying on the TLS port; the
        Admin API answers again once they close.
        """
        yield self.start_daemon()
        self.assertIn("admin 64", self.daemon.output)
        flood = self.hold([connect_nowait(self.admin_port) for _ in range(120)])
        yield self.daemon.wait_for("admin listener at its limit of 64 connections")
        for _ in range(3):
            yield self.handshake_ok()
        for s in flood:
            s.close()
        yield self.daemon.wait_for("admin listener below its limit again")
        out, err, code = yield tlsclients.run("/usr/bin/curl", "-sS", "http://127.0.0.1:%d/health" % self.admin_port)
        self.assertEqual((code, json.loads(out)), (0, {"status": "ok"}), err)
        self.assertEqual(self.daemon.output.count("admin listener at its limit"), 1)


class OpenFileLimitTests(DaemonFixture, ShowsDaemonOutput, TestCase):
    """
    Tests for a daemon started with a low open-file limit.
    """

    @inlineCallbacks
    def test_no_emfile_flood(self):
        """
        With RLIMIT_NOFILE 256 and default limits, 500 connections at once
        on every port leave the daemon short of the limit: no EMFILE line,
        one "connection limit reached" line; after they close it serves
        TLS again.
        """
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        # The child inherits the soft limit in force when it is spawned
        # (synchronously, inside start()).
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        try:
            started = self.start_daemon({"raise_nofile": False})
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        yield started
        self.assertIn("max_connections 96 (open-file limit 256, 64 reserved)", self.daemon.output)
        flood = self.hold(
            [connect_nowait(self.tls_port) for _ in range(300)]
            + [connect_nowait(self.http_port) for _ in range(100)]
            + [connect_nowait(self.admin_port) for _ in range(100)]
        )
        yield self.daemon.wait_for("connection limit reached")
        # Let the daemon work through what it can before looking.
        yield deferLater(reactor, 1.0, lambda: None)
        for s in flood:
            s.close()
        yield self.daemon.wait_for("connections below the limit again")
        yield self.handshake_ok()
        output = self.daemon.output
        self.assertNotIn("EMFILE", output)
        self.assertNotIn("Too many open files", output)
        self.assertNotIn("Traceback", output)
        # One line per process that has a limiter and hit it: the daemon
        # (with workers, the master: port 80 and Admin), and each worker.
        self.assertGreaterEqual(output.count("connection limit reached"), 1)
        self.assertLessEqual(output.count("connection limit reached"), 1 if self.workers == 1 else 1 + self.workers)


class ReloadListenerTests(DaemonFixture, ShowsDaemonOutput, TestCase):
    """
    Tests for SIGHUP reloads that change listeners.
    """

    @inlineCallbacks
    def test_reload_to_busy_port_rejected(self):
        """
        A reload that moves the TLS listener to a port already taken is
        rejected with the reason; the old listener and the whole running
        configuration stay (a route changed in the same file is not
        applied). Once the port is free, the same file applies.
        """
        yield self.start_daemon()
        holder = socket.socket()
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        self.addCleanup(holder.close)
        busy = holder.getsockname()[1]
        config = self.daemon.config
        config["listen"]["tls"] = [endpoint(busy)]
        config["routes"][0]["upstream"] = "127.0.0.1:%d" % self.upstream_b
        self.daemon.write()
        self.daemon.signal()
        yield self.daemon.wait_for("reload rejected")
        self.assertIn("cannot listen on tls endpoint %r" % (endpoint(busy),), self.daemon.output)
        self.assertIn("Address already in use", self.daemon.output)
        result = yield self.handshake_ok()
        self.assertEqual(result["echo"], b"A:ok")
        out, err, code = yield tlsclients.run("/usr/bin/curl", "-sS", "http://127.0.0.1:%d/status" % self.admin_port)
        status = json.loads(out)
        self.assertEqual(status["listeners"]["tls"], [endpoint(self.tls_port)])
        self.assertIn("Address already in use", status["last_reload_error"])

        holder.close()
        self.daemon.signal()
        yield self.daemon.wait_for("configuration reloaded")
        result = yield self.handshake_ok(busy)
        self.assertEqual(result["echo"], b"B:ok")
        # With workers, once no worker of the previous generation accepts there.
        yield self.daemon.wait_for("tls listener on %s closed" % (endpoint(self.tls_port),))
        with self.assertRaises(OSError):
            socket.create_connection(("127.0.0.1", self.tls_port), timeout=2).close()


class ConnectionLimitWorkersTests(ConnectionLimitTests):
    """
    Tests for limits.* with ``workers: 2`` (TLS limits apply per worker).
    """

    workers = 2


class OpenFileLimitWorkersTests(OpenFileLimitTests):
    """
    Tests for a low open-file limit with ``workers: 2``.
    """

    workers = 2


class ReloadListenerWorkersTests(ReloadListenerTests):
    """
    Tests for SIGHUP reloads that change listeners with ``workers: 2``: a
    busy port rejects the reload and the workers keep serving; once free,
    a new generation of workers serves the new port and the old one closes.
    """

    workers = 2
