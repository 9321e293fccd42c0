"""
``/metrics`` per worker: the last counters each running worker reported
(:class:`kongacme.workers.channel.Counters`), labelled ``worker="N"``. The
sums over every worker (dead ones included) are the daemon's own
``kongacme_tls_handshakes_total`` and ``kongacme_engine_connections_total``.
"""

from __future__ import annotations

from typing import Any, Iterator

import attrs
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from kongacme.engine.lean import ENGINE_PATHS
from kongacme.tls.protocol import HANDSHAKE_OUTCOMES


@attrs.define(eq=False)  # hashable: the registry keys on it
class WorkersCollector(Collector):
    """
    Reads a :class:`kongacme.workers.master.WorkerMode` at each scrape.
    """

    _mode: Any

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        """The metrics, as of the workers' last reports."""
        supervisor = self._mode.supervisor
        yield GaugeMetricFamily("kongacme_workers", "Worker processes running.", value=len(supervisor.processes))
        yield CounterMetricFamily(
            "kongacme_worker_restarts", "Worker processes replaced after they died.", value=supervisor.restarts
        )
        handshakes = CounterMetricFamily(
            "kongacme_worker_tls_handshakes", "Connections on the TLS listener by worker and outcome.",
            labels=["worker", "outcome"],
        )
        connections = GaugeMetricFamily(
            "kongacme_worker_connections", "TLS connections open in the worker.", labels=["worker"]
        )
        relayed = CounterMetricFamily(
            "kongacme_worker_relayed_bytes", "Bytes relayed by the worker's ended connections, by direction.",
            labels=["worker", "direction"],
        )
        certificates = GaugeMetricFamily(
            "kongacme_worker_certificate_cache_entries", "Names with a certificate in the worker's cache.",
            labels=["worker"],
        )
        engine = CounterMetricFamily(
            "kongacme_worker_engine_connections",
            "Connections the worker's lean engine accepted, by path: lean (served by the engine) or handed_over "
            "(to the Twisted path).",
            labels=["worker", "path"],
        )
        for slot, counters in sorted(self._mode.counters.items()):
            worker = str(slot)
            counted = counters.get("handshakes", {})
            for outcome in sorted(set(HANDSHAKE_OUTCOMES) | set(counted)):
                handshakes.add_metric([worker, outcome], counted.get(outcome, 0))
            connections.add_metric([worker], counters.get("connections", 0))
            for direction in ("from_clients", "from_upstreams"):
                relayed.add_metric([worker, direction], counters.get("bytes", {}).get(direction, 0))
            certificates.add_metric([worker], counters.get("certificates", 0))
            paths = counters.get("engine")
            if paths:  # {} on the Twisted engine
                for path in sorted(set(ENGINE_PATHS) | set(paths)):
                    engine.add_metric([worker, path], paths.get(path, 0))
        yield handshakes
        yield connections
        yield relayed
        yield certificates
        if engine.samples:
            yield engine
