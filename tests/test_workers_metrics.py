"""
Tests for kongacme.workers.metrics: the per-worker families read from a
WorkerMode's last reports.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.trial.unittest import SynchronousTestCase

from kongacme.workers.metrics import WorkersCollector


@attrs.define
class FakeSupervisor:
    """What the collector reads of a WorkerSupervisor."""

    processes: dict[int, Any] = attrs.field(factory=dict)
    restarts: int = 0


@attrs.define
class FakeMode:
    """What the collector reads of a WorkerMode: the supervisor and the current workers' last reports."""

    counters: dict[int, dict]
    supervisor: FakeSupervisor = attrs.field(factory=FakeSupervisor)


def collected(mode: FakeMode) -> dict[str, Any]:
    """``{family name: family}`` of one collection."""
    return {family.name: family for family in WorkersCollector(mode).collect()}


class WorkerEngineConnectionsTests(SynchronousTestCase):
    """
    Tests for ``kongacme_worker_engine_connections_total``: each worker's
    lean engine connections by path.
    """

    def test_per_worker(self) -> None:
        """Every worker on the lean engine has both paths, 0 for a path none took yet."""
        families = collected(FakeMode({
            1: {"engine": {"lean": 5, "handed_over": 2}},
            2: {"engine": {"lean": 3}},
        }))
        family = families["kongacme_worker_engine_connections"]
        self.assertEqual(family.type, "counter")
        self.assertEqual(
            {(s.labels["worker"], s.labels["path"]): s.value for s in family.samples},
            {("1", "lean"): 5, ("1", "handed_over"): 2, ("2", "lean"): 3, ("2", "handed_over"): 0},
        )
        self.assertEqual({s.name for s in family.samples}, {"kongacme_worker_engine_connections_total"})

    def test_twisted_engine(self) -> None:
        """Workers on the Twisted engine (no engine counts) have no such family; the others are there."""
        families = collected(FakeMode({1: {"engine": {}, "handshakes": {"cached": 1}}, 2: {}}))
        self.assertNotIn("kongacme_worker_engine_connections", families)
        self.assertIn("kongacme_worker_tls_handshakes", families)
