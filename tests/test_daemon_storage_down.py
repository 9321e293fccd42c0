"""
A daemon started while its Redis is down: it serves the fallback, keeps
trying to load its stored certificates, and serves them once Redis is back,
with no restart.
"""

import os

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from kongacme.storage import keys
from kongacme.testing import TestCA

from tests import tlsclients
from tests.daemonproc import Daemon, ShowsDaemonOutput, free_port
from tests.redisfixture import RedisServer


class StartWithStorageDownTests(ShowsDaemonOutput, TestCase):
    """
    Tests for a daemon whose storage is down at start.

    :cvar workers: the daemon's ``workers`` (:class:`StartWithStorageDownWorkersTests` runs with 2).
    """

    timeout = 90
    workers = 1

    @inlineCallbacks
    def test_loads_once_storage_answers(self):
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        redis = yield RedisServer.start(self)
        ca = TestCA.create()
        cafile = ca.write_ca(os.path.join(directory, "ca.pem"))
        certified = ca.issue(["stored.example.test"])
        storage = redis.storage(reactor)
        yield storage.set(keys.cert_key("stored.example.test"), keys.encode_cert_key(certified))
        yield storage.close()
        yield redis.stop(save=True)
        port = free_port()
        daemon = Daemon(
            directory,
            {
                "listen": {"tls": ["tcp:%d:interface=127.0.0.1" % port], "http": [], "admin": []},
                "state_dir": os.path.join(directory, "state"),
                "acme": {
                    "account_email": "ops@example.test",
                    "api_uri": "https://127.0.0.1:1/directory",
                    "tos_accepted": True,
                    "domains": ["*.example.test"],
                    "storage": "redis",
                    "storage_config": {"redis": redis.storage_config()},
                },
                "issuance": {"on_demand": False},
                "workers": self.workers,
            },
        )
        self.addCleanup(daemon.stop)
        yield daemon.start(port)
        if self.workers > 1:
            yield daemon.wait_for("accepting:", count=self.workers)
        yield daemon.wait_for("could not load certificates from storage", timeout=20)
        first = yield tlsclients.handshake(port, "stored.example.test", tlsclients.client_context(), payload=b"")
        self.assertNotEqual(first["names"], ["stored.example.test"])
        yield deferLater(reactor, 6, lambda: None)  # at least one retry while still down
        yield redis.restart()
        yield daemon.wait_for("1 certificate(s) loaded from storage", timeout=30)
        served = yield tlsclients.handshake(port, "stored.example.test", tlsclients.client_context(cafile),
                                            payload=b"")
        self.assertEqual(served["names"], ["stored.example.test"])
        self.assertEqual(daemon.output.count("could not load certificates from storage"), 1)


class StartWithStorageDownWorkersTests(StartWithStorageDownTests):
    """
    Tests for a daemon with ``workers: 2`` whose storage is down at start:
    the workers serve the fallback, then the certificates the master loads
    once storage answers (a worker that remembered "none" for a name learns
    it changed).
    """

    workers = 2
