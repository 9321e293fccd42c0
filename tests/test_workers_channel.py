"""
Tests for kongacme.workers.channel, with the master's end
(kongacme.workers.master) and a worker's end (kongacme.workers.worker)
connected in memory: the initial state, changes, reconfiguration, a
worker's question for a certificate, and counters.
"""

from __future__ import annotations

import collections
import io
import os
import socket
import subprocess
import sys
from unittest import mock

import attrs
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.test.iosim import connectedServerAndClient
from twisted.trial.unittest import SynchronousTestCase

from kongacme.config import RouteConfig, parse_config
from kongacme.testing import TestCA
from kongacme.tls.cache import CertificateCache
from kongacme.workers import channel
from kongacme.workers.master import MasterChannel, WorkerMode, reload_refusal
from kongacme.workers.worker import Worker, WorkerChannel, parse_arguments

CA = TestCA.create()


class FakeGate:
    """The manager's handshake gate: records names, answers with a Deferred the test fires."""

    def __init__(self):
        self.asked = []
        self.waiting = {}

    def before_handshake(self, name):
        self.asked.append(name)
        self.waiting[name] = Deferred()
        return self.waiting[name]


class FakeTLSFactory:
    def __init__(self):
        self.handshakes = collections.Counter()


class FakeDaemon(MultiService):
    """What WorkerMode reads of the daemon service (never started here)."""

    def __init__(self, config, cache, manager):
        super().__init__()
        self.config = config
        self.cache = cache
        self.manager = manager
        self.tls_factory = FakeTLSFactory()


@attrs.define(eq=False)
class FakeProcess:
    """What the master reads of a WorkerProcess."""

    slot: int
    pid: int | None = None
    ended: Deferred = attrs.field(factory=Deferred)
    accepting: Deferred = attrs.field(factory=Deferred)


class ChannelTests(SynchronousTestCase):
    """
    Tests for the master and a worker talking over the AMP commands.
    """

    def connect(self, config=None, certificates=()):
        self.clock = Clock()
        self.cache = CertificateCache(CA.issue(["fallback.invalid"]))
        for certified in certificates:
            self.cache.put(certified)
        config = config or parse_config(
            {"routes": [{"hosts": ["a.test"], "upstream": "127.0.0.1:9"}], "workers": 2,
             "acme": {"account_email": "a@example.test", "tos_accepted": True, "domains": ["*.test"]}},
            "/tmp",
        )
        self.daemon = FakeDaemon(config, self.cache, manager=FakeGate())
        self.mode = WorkerMode(self.daemon, self.clock)
        self.mode.start()
        self.worker = Worker(self.clock, [], slot=1)
        self.lost = []
        self.process = FakeProcess(1)
        master_end, _, self.pump = connectedServerAndClient(
            lambda: WorkerChannel(self.worker, lambda: self.lost.append(True)),
            lambda: MasterChannel(self.mode, self.process),
            clock=self.clock,
        )
        self.master_end = master_end
        self.pump.flush()

    def test_initial_state(self):
        """
        A new worker gets the configuration and the fallback, then starts,
        holding no certificate; a certificate far over AMP's 64 KiB value
        limit is fetched on first use.
        """
        big = CA.issue(["big%d.example.test" % (i,) for i in range(2500)])
        self.assertGreater(len(big.chain_pem()), 65535)
        small = [CA.issue(["s%d.test" % (i,)]) for i in range(3)]
        self.connect(certificates=[big] + small)
        cache = self.worker.cache
        self.assertEqual(cache.names(), [])
        self.assertEqual(cache.fallback.fingerprint, self.cache.fallback.fingerprint)
        self.assertEqual(self.worker.router.route_for("a.test").port, 9)
        self.assertIsNotNone(self.worker.tls_factory)
        self.successResultOf(self.process.accepting)
        self.assertTrue(self.worker.gate.ask_master)
        self.assertEqual(self.worker.cache.size, 10_000)
        waiting = self.worker.gate.before_handshake("big2499.example.test")
        self.pump.flush()
        self.successResultOf(waiting)
        self.assertEqual(cache.get("big2499.example.test").fingerprint, big.fingerprint)

    def test_changes_reach_the_worker(self):
        """Certificates the worker holds follow when replaced and removed in the master's cache."""
        self.connect()
        first = CA.issue(["c.test", "d.test"])
        self.cache.put(first)
        self.clock.advance(0)
        for name in ("c.test", "d.test"):
            self.worker.gate.before_handshake(name)
        self.pump.flush()
        self.assertEqual(self.worker.cache.get("d.test").fingerprint, first.fingerprint)
        second = CA.issue(["c.test"])
        self.cache.put(second)
        self.cache.remove("d.test")
        self.clock.advance(0)
        # One delivery of the notice: the renewed certificate is served
        # already, before any fetch could have been answered.
        self.pump.pump()
        self.assertEqual(self.worker.cache.get("c.test").fingerprint, second.fingerprint)
        self.assertIsNone(self.worker.cache.get("d.test"))
        self.pump.flush()
        self.assertEqual(self.worker.cache.get("c.test").fingerprint, second.fingerprint)
        self.assertIsNone(self.worker.cache.get("d.test"))

    def test_reconfigure(self):
        """A reload's routes, fallback and drain deadline reach the worker and the supervisor."""
        self.connect()
        self.assertEqual(self.mode.supervisor.drain_deadline, 10.0)
        new = attrs.evolve(self.daemon.config, routes=(RouteConfig(("b.test",), "127.0.0.1", 10),),
                           workers_drain_timeout=3.0)
        self.cache.fallback = CA.issue(["other-fallback.invalid"])
        self.mode.reconfigure(new)
        self.pump.flush()
        self.assertIsNone(self.worker.router.route_for("a.test"))
        self.assertEqual(self.worker.router.route_for("b.test").port, 10)
        self.assertEqual(self.worker.cache.fallback.fingerprint, self.cache.fallback.fingerprint)
        self.assertEqual(self.mode.supervisor.drain_deadline, 3.0)
        self.assertEqual(self.worker.settings.drain_timeout, 3.0)

    def test_refused_configuration_kept(self):
        """Settings a worker cannot apply are answered with the reason; the old ones stay."""
        self.connect()
        settings = channel.worker_settings(self.daemon.config)
        settings["routes"] = [{"hosts": ["x.test"]}]
        answers = []
        self.master_end.callRemote(channel.Configure, settings=settings).addCallback(answers.append)
        self.pump.flush()
        self.assertFalse(answers[0]["applied"])
        self.assertIn("upstream_host", answers[0]["reason"])
        self.assertEqual(self.worker.router.route_for("a.test").port, 9)

    def test_ask_waits_for_the_gate(self):
        """
        A name the master has no certificate for goes through the master's
        gate; the handshake is held until it opens and the certificate
        issued meanwhile has been fetched.
        """
        self.connect()
        answers = []

        def answered(_):
            # The certificate is in the worker's cache.
            answers.append(self.worker.cache.get("new.test") is not None)

        self.worker.gate.before_handshake("new.test").addCallback(answered)
        self.pump.flush()
        self.assertEqual(self.daemon.manager.asked, ["new.test"])
        self.assertEqual(answers, [])
        self.cache.put(CA.issue(["new.test"]))
        self.daemon.manager.waiting["new.test"].callback(None)
        self.pump.flush()
        self.assertEqual(answers, [True])

    def test_cached_name_not_asked(self):
        """A name the worker holds a certificate for goes ahead without asking."""
        self.connect(certificates=[CA.issue(["held.test"])])
        self.worker.gate.before_handshake("held.test")
        self.pump.flush()
        self.assertIsNone(self.worker.gate.before_handshake("held.test"))
        self.assertIsNone(self.worker.gate.before_handshake(None))
        self.assertEqual(self.daemon.manager.asked, [])

    def test_challenge_certificate(self):
        """
        A worker's acme-tls/1 hello is answered from the master's pending
        tls-alpn-01 key authorization (ChallengeCertificate); with none
        pending, the worker refuses it.
        """
        from kongacme.storage.alpn_keys import TlsAlpnKeyAuthorizations
        from kongacme.tls.alpn_challenge import ACME_TLS_1, ID_PE_ACME_IDENTIFIER, acme_identifier_value
        from kongacme.tls.clienthello import ClientHello
        from tests.test_tls_alpn_challenge import challenge_handshake

        self.connect()
        self.daemon.alpn_keys = TlsAlpnKeyAuthorizations(self.clock)
        self.daemon.alpn_keys.put("a.test", "token-token-token-token.thumbprint")
        responder = self.worker.tls_factory.challenges
        answers = []
        for name in ("a.test", "b.test"):
            hello = ClientHello(server_name=name, alpn_offered=(ACME_TLS_1,))
            responder.session_for(hello).addCallback(answers.append)
        self.pump.flush()
        self.assertIsNone(answers[1])
        _, _, certificate = challenge_handshake(answers[0])
        self.assertEqual(certificate.extensions.get_extension_for_oid(ID_PE_ACME_IDENTIFIER).value.value,
                         acme_identifier_value("token-token-token-token.thumbprint"))

    def test_counters_summed(self):
        """A worker's counters are kept per worker and summed; a dead worker's counts stay in the sum."""
        self.connect()
        self.worker.tls_factory.handshakes["cached"] += 3
        self.worker.proxy_factory.bytes["from_clients"] += 100
        self.worker.report()
        self.pump.flush()
        self.assertEqual(self.mode.reports[self.process]["handshakes"], {"cached": 3})
        self.assertEqual(self.daemon.tls_factory.handshakes["cached"], 3)
        # Counted per slot for the slot's current worker only.
        self.assertEqual(self.mode.counters, {})
        self.mode.supervisor.processes[1] = self.process
        self.assertEqual(self.mode.counters[1]["handshakes"], {"cached": 3})
        self.process.ended.callback("exited with status 0")
        self.mode._retire(self.process)
        self.assertEqual(self.mode.reports, {})
        self.assertEqual(self.daemon.tls_factory.handshakes["cached"], 3)
        self.assertEqual(self.mode.totals()["bytes"], {"from_clients": 100})

    def test_engine_paths_summed(self):
        """
        A worker's lean engine counts by path are reported, kept per worker
        and summed; a dead worker's counts stay in the sum (counters never
        go down), apart from the handshake counts.
        """
        self.connect()
        self.worker.lean.relayed += 2
        self.worker.lean.handed_over += 1
        self.worker.tls_factory.handshakes["cached"] += 2
        self.worker.report()
        self.pump.flush()
        self.mode.supervisor.processes[1] = self.process
        self.assertEqual(self.mode.counters[1]["engine"], {"lean": 2, "handed_over": 1})
        self.assertEqual(self.mode.totals()["engine"], {"lean": 2, "handed_over": 1})
        self.process.ended.callback("exited with status 0")
        self.mode._retire(self.process)
        successor = FakeProcess(1)
        self.mode.supervisor.processes[1] = successor
        self.mode.report(successor, {"handshakes": {"cached": 4}, "engine": {"lean": 4, "handed_over": 0}})
        self.assertEqual(self.mode.totals()["engine"], {"lean": 6, "handed_over": 1})
        self.assertEqual(self.mode.summed("engine"), {"lean": 6, "handed_over": 1})
        self.assertEqual(self.mode.status()["per_worker"]["1"]["engine"], {"lean": 4, "handed_over": 0})
        # The engine's counts are not handshake outcomes.
        self.assertEqual(self.daemon.tls_factory.handshakes, {"cached": 6})


class ChunkedJSONTests(SynchronousTestCase):
    """
    Tests for ChunkedJSON and in_groups.
    """

    def test_round_trip(self):
        """A value of any size round-trips, each AMP value under the limit."""
        argument = channel.ChunkedJSON()
        value = {"text": "x" * 200_000}
        strings = {}
        argument.toBox(b"v", strings, {"v": value}, None)
        self.assertGreater(len(strings), 3)
        self.assertTrue(all(len(part) <= 65535 for part in strings.values()))
        objects = {}
        argument.fromBox(b"v", strings, objects, None)
        self.assertEqual(objects, {"v": value})
        self.assertEqual(strings, {})

    def test_in_groups(self):
        """Names are sent in lists of at most the limit."""
        self.assertEqual(list(channel.in_groups(list("abcde"), 2)), [["a", "b"], ["c", "d"], ["e"]])
        self.assertEqual(list(channel.in_groups([], 2)), [])


class ReloadRefusalTests(SynchronousTestCase):
    """
    Tests for reload_refusal.
    """

    def test_refusals(self):
        """Changing workers takes a restart; changing the TLS listeners does not, with workers or without."""
        one = parse_config({}, "/tmp")
        two = parse_config({"workers": 2}, "/tmp")
        self.assertIsNone(reload_refusal(one, one))
        self.assertIn("workers: changing the number of workers takes a restart", reload_refusal(one, two))
        moved = parse_config({"workers": 2, "listen": {"tls": "tcp:9443"}}, "/tmp")
        self.assertIsNone(reload_refusal(two, moved))
        self.assertIsNone(reload_refusal(one, parse_config({"listen": {"tls": "tcp:9443"}}, "/tmp")))


class ArgumentsTests(SynchronousTestCase):
    """
    Tests for the worker's command line (kongacme.workers.worker.parse_arguments).
    """

    def test_listen(self):
        """Each --listen is a descriptor, a family and, for a haproxy: socket, :proxy."""
        options = parse_arguments(
            ["--slot", "2", "--master-pid", "1", "--listen", "4:AF_INET", "--listen", "5:AF_INET6:proxy"]
        )
        self.assertEqual(options.listen, [(4, socket.AF_INET, False), (5, socket.AF_INET6, True)])

    def test_bad_listen(self):
        """Anything else is a usage error naming the value."""
        for value in ("4", "x:AF_INET", "4:AF_BOGUS", "4:AF_INET:other"):
            with self.assertRaises(SystemExit):
                with mock.patch("sys.stderr", io.StringIO()) as stderr:
                    parse_arguments(["--slot", "1", "--master-pid", "1", "--listen", value])
            self.assertIn("expected FD:FAMILY[:proxy], got %r" % (value,), stderr.getvalue())


class WorkerImportsTests(SynchronousTestCase):
    """
    Tests for what a worker process imports.
    """

    def test_lean(self):
        """
        The worker's modules (and the configuration classes it reads) load
        neither storage, the ACME client, the web stack, issuance, renewal,
        fleet code, treq nor prometheus_client.
        """
        code = (
            "import sys, kongacme.workers.worker, kongacme.config.daemon\n"
            "banned = ('kongacme.storage', 'kongacme.acme', 'kongacme.web', 'kongacme.issuance',"
            " 'kongacme.renewal', 'kongacme.fleet', 'treq', 'prometheus_client')\n"
            "print(sorted(m for m in sys.modules if any(m == b or m.startswith(b + '.') for b in banned)))\n"
        )
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, check=True)
        self.assertEqual(out.stdout.strip(), "[]")
