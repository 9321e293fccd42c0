"""
Tests for order locks across a crash, in a running daemon with
``storage: kong`` and a real Pebble: a node killed (``kill -9``) mid-order
leaves its lock in storage; restarted, it takes the lock over at once and
its first visitor gets a real certificate. Another node's lock is left
alone, and a visitor waiting on it is logged.
"""

import os
import re

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase

from kongacme.storage import keys
from kongacme.storage.files import FileStorage
from kongacme.storage.locks import LockOwner, StorageLocker
from kongacme.tls.fallback import FALLBACK_NAME

from tests import tlsclients
from tests.test_daemon_acme import AcmeDaemonMixin
from tests.test_workers_daemon import alive, sleep


class _Silent(Protocol):
    """A CA that accepts connections and never answers: an order hangs."""


class CrashLeftLockTests(AcmeDaemonMixin, TestCase):
    """
    Tests for a restarted daemon and the order locks its previous run left.
    """

    def storage(self) -> FileStorage:
        return FileStorage(os.path.join(self.dir, "state", "storage"), reactor)

    def node_id(self) -> str:
        with open(os.path.join(self.dir, "state", "node", "id-0")) as f:
            return f.read().strip()

    @inlineCallbacks
    def test_restart_after_kill_takes_lock_over(self):
        """
        A daemon killed with SIGKILL while its order hangs at the CA leaves
        the order lock (30 s lease) in storage. Restarted with a
        handshake_wait of 10 s, shorter than what is left of the lease, its
        first visitor still gets a certificate that verifies: the lock is
        recognised as its previous run's and taken over at once (before,
        the visitor waited 10 s and got the fallback).
        """
        silent = reactor.listenTCP(0, Factory.forProtocol(_Silent), interface="127.0.0.1")
        self.addCleanup(silent.stopListening)
        host = "crash.example.test"
        yield self.start(
            api_uri="https://127.0.0.1:%d/dir" % (silent.getHost().port,), storage="kong", request_timeout=120,
        )
        visitor = tlsclients.handshake(self.tls_port, host, tlsclients.client_context(), payload=b"", timeout=60)
        visitor.addErrback(lambda failure: None)  # cut off by the kill
        yield self.daemon.wait_for("ordering a certificate for %s " % (host,))
        workers = [int(pid) for pid in re.findall(r"worker \d+ started \(pid (\d+)\)", self.daemon.output)]
        self.daemon.transport.signalProcess("KILL")
        yield self.daemon.collector.ended
        # Its workers exit with it (until then they hold its TLS socket).
        for _ in range(50):
            if not any(alive(pid) for pid in workers):
                break
            yield sleep(0.1)
        yield visitor
        left = yield self.storage().get(keys.update_lock(host))
        self.assertIsNotNone(left, "the killed daemon left no lock: nothing to test")
        node = self.node_id()
        self.assertTrue(left.decode().startswith(node + ":"), left)

        self.daemon.config["acme"]["api_uri"] = self.pebble.directory_url
        self.daemon.config["issuance"].update(handshake_wait=10, request_timeout=5)
        yield self.daemon.start(self.tls_port)
        if self.workers > 1:
            yield self.daemon.wait_for("accepting:", count=self.workers)
        result = yield tlsclients.handshake(self.tls_port, host, self.verified(), payload=b"", timeout=60)
        self.assertEqual(result["names"], [host])
        self.assertIn("took over lock %s left by this node's previous run" % (keys.update_lock(host),),
                      self.daemon.output)
        self.assertEqual(self.node_id(), node)
        self.assertEqual(self.orders(host), 1)

    @inlineCallbacks
    def test_other_nodes_lock_left_alone(self):
        """
        A lock held by another node sharing the store (another state_dir)
        is not taken: the visitor waits handshake_wait, gets the fallback,
        and one line names the host and says another node holds the lock.
        """
        host = "fleet.example.test"
        yield self.start(storage="kong", handshake_wait=2)
        other = StorageLocker(self.storage(), LockOwner("0123456789abcdef", "feedface0001"))
        lease = yield other.acquire(keys.update_lock(host), 60)
        self.assertIsNotNone(lease)
        result = yield tlsclients.handshake(self.tls_port, host, tlsclients.client_context(), payload=b"", timeout=30)
        self.assertEqual(result["names"], [FALLBACK_NAME])
        self.assertEqual(self.orders(host), 0)
        line = "another node holds the order lock for %s (node 0123456789abcdef)" % (host,)
        self.assertEqual(self.daemon.output.count(line), 1, self.daemon.output)
        self.assertEqual((yield self.storage().get(keys.update_lock(host))), lease.token.encode())


class CrashLeftLockWorkersTests(CrashLeftLockTests):
    """
    Tests for order locks across a crash with ``workers: 2``: the master
    killed mid-order takes its workers with it; restarted, it takes its
    lock over and a worker's first visitor gets the certificate.
    """

    workers = 2
