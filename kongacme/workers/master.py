"""
The master's side of ``workers: N`` (N > 1), wired into
:class:`kongacme.service.DaemonService`:

- the TLS listening sockets are opened by the master (``tcp:``, ``tcp6:``,
  ``unix:``, ``systemd:``, any of them behind ``haproxy:``) but never
  accepted on there: they are handed to the workers;
- a reload that changes ``listen.tls`` opens the new sockets first (one
  that cannot be opened rejects the reload), then starts a new generation
  of workers on the new set; each old worker is drained once its
  successor accepts, and a socket no longer listed is closed once no old
  worker accepts on it any more (as nginx does);
- every worker gets the configuration's share it needs and the fallback
  when it starts; it fetches a server name's certificate on first use
  (:class:`channel.FetchCertificates`, answered with what the master's
  cache lookup picks) and keeps a bounded cache of them; the names whose
  certificates change in the master (the certificate cache's subscription:
  orders, renewals, fleet propagation, static certificates, removals alike)
  are sent to every worker (:class:`channel.CertificatesChanged`) with the
  certificate the master now serves for each (if any), which replaces what
  the worker holds of them at once (and drops and fetches again the rest:
  names removed, names a changed wildcard covers);
- a worker's :class:`channel.AskCertificate` goes through the master's
  handshake gate (the certificate manager), so one order per name however
  many workers ask;
- the workers' counters are summed into the master's TLS handshake
  counters (``/metrics``; relayed bytes and the lean engine's connections
  by path too) and kept per worker (``/status``, and
  ``kongacme_worker_*`` metrics).
"""

from __future__ import annotations

import collections
import os
import socket
from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure

from kongacme.listeners import ListenerSet
from kongacme.tls.certs import CertifiedKey
from kongacme.workers import channel
from kongacme.workers.supervisor import WorkerProcess, WorkerSupervisor, spawn_worker

log = Logger()


#: The counters a worker reports as ``{name: count}`` that are summed over
#: every worker, dead ones included (kept in ``_retired`` as
#: ``"<part>:<name>"``): relayed bytes, the lean engine's connections by path.
SUMMED_PARTS = ("bytes", "engine")

#: More certificates changed at once than this and the change notice
#: carries the names only (see :meth:`WorkerMode.flush`).
BULK_CERTIFICATES = 256


def reload_refusal(old: Any, new: Any) -> str | None:
    """
    Why a reload from configuration ``old`` to ``new`` cannot be applied
    while running (``None``: it can).
    """
    if new.workers != old.workers:
        return "workers: changing the number of workers takes a restart (%d now, %d asked)" % (
            old.workers, new.workers,
        )
    return None


class _NotAccepting(Factory):
    """The factory of the master's TLS ports, which never accept (the workers do)."""

    noisy = False

    def buildProtocol(self, addr: Any) -> None:
        return None


class MasterChannel(amp.AMP):
    """The master's end of one worker's channel."""

    def __init__(self, mode: "WorkerMode", process: WorkerProcess):
        super().__init__()
        self._mode = mode
        self.process = process

    def connectionMade(self) -> None:
        super().connectionMade()
        self._mode.connected(self)

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        self._mode.disconnected(self)

    @channel.FetchCertificates.responder
    def fetch_certificates(self, names: list) -> dict:
        return self._mode.fetch(names)

    @channel.AskCertificate.responder
    def ask_certificate(self, name: str) -> Any:
        return self._mode.ask(name)

    @channel.ChallengeCertificate.responder
    def challenge_certificate(self, name: str) -> Deferred:
        return self._mode.challenge(name)

    @channel.Counters.responder
    def counters(self, counters: dict) -> dict:
        self._mode.report(self.process, counters)
        return {}

    @channel.StoppedAccepting.responder
    def stopped_accepting(self) -> dict:
        self._mode.stopped_accepting(self.process)
        return {}


def _ignore_lost(failure: Failure) -> None:
    # A worker that died meanwhile: its replacement gets the whole state.
    failure.trap(Exception)


class WorkerMode:
    """
    Everything the master does for its workers.

    :param daemon: the :class:`kongacme.service.DaemonService` (read:
        ``config``, ``cache``, ``manager``, ``tls_factory``).
    :param reactor: the reactor.
    :param spawn: starts a worker: ``(reactor, slot, listening sockets,
        make_channel) -> WorkerProcess`` (:func:`spawn_worker`).

    :ivar listeners: the TLS listening sockets (a :class:`ListenerSet`
        whose ports never accept), in the daemon's ``listeners["tls"]``.
    :ivar supervisor: the workers' :class:`WorkerSupervisor` (a child
        service of the daemon).
    :ivar reports: the last report of each running worker (of every
        generation).
    """

    def __init__(self, daemon: Any, reactor: Any, spawn: Callable[..., WorkerProcess] = spawn_worker):
        self._daemon = daemon
        self._reactor = reactor
        self._spawn_worker = spawn
        self.listeners = ListenerSet(reactor, "tls", _NotAccepting(), accepting=False, defer_close=True)
        self._tls = frozenset(daemon.config.listen.tls)
        #: Sockets a reload removed, each with the workers that may still
        #: accept on them (closed when none does).
        self._closing: list[tuple[set[WorkerProcess], list[str]]] = []
        #: Workers that closed their listening sockets (draining).
        self._stopped: set[WorkerProcess] = set()
        self.supervisor = WorkerSupervisor(
            reactor, daemon.config.workers, self._spawn, on_ended=self._retire,
            drain_deadline=daemon.config.workers_drain_timeout,
        )
        self.channels: set[MasterChannel] = set()
        self.reports: dict[WorkerProcess, dict] = {}
        self._retired: collections.Counter[str] = collections.Counter()
        self._pending: dict[str, None] = {}
        self._pending_certificates: set[int] = set()
        self._flush_call: Any = None
        self._fallback: CertifiedKey | None = None
        visibility = getattr(daemon, "visibility", None)
        if visibility is not None:
            from kongacme.workers.metrics import WorkersCollector

            visibility.registry.register(WorkersCollector(self))

    # -- start ------------------------------------------------------------------

    def start(self) -> None:
        """
        The TLS sockets are open (and not read here): follow the certificate
        cache, and start the workers with the daemon.
        """
        self._daemon.cache.subscribe(self._changed)
        self._fallback = self._daemon.cache.fallback
        self.supervisor.setServiceParent(self._daemon)

    def _listening(self) -> list[tuple[int, socket.AddressFamily, bool]]:
        found = []
        for description, port in self.listeners.items():
            fd = port.fileno()  # type: ignore[attr-defined]
            # The family as the kernel knows it (tcp6:, unix: and adopted
            # systemd: sockets alike).
            with socket.socket(fileno=os.dup(fd)) as probe:
                family = socket.AddressFamily(probe.family)
            # The config checked the prefix (kongacme.config.daemon).
            found.append((fd, family, description.lower().startswith("haproxy:")))
        return found

    def _spawn(self, slot: int) -> WorkerProcess:
        return self._spawn_worker(
            self._reactor, slot, self._listening(), lambda process: MasterChannel(self, process)
        )

    # -- what the workers get ----------------------------------------------------

    def connected(self, chan: MasterChannel) -> None:
        """A new worker's channel: send the configuration and the fallback, then Start."""
        self.flush()
        self.channels.add(chan)
        daemon = self._daemon
        self._send(chan, channel.Configure, settings=channel.worker_settings(daemon.config)).addCallback(
            self._configured, chan.process.slot
        )
        self._send(chan, channel.SetFallback, certificate=channel.encode_certificate(daemon.cache.fallback))
        self._send(chan, channel.Start).addCallback(self._started, chan.process)

    def _started(self, answer: dict | None, process: WorkerProcess) -> None:
        if answer is not None and not process.accepting.called:
            process.accepting.callback(None)

    def disconnected(self, chan: MasterChannel) -> None:
        self.channels.discard(chan)

    def _send(self, chan: MasterChannel, command: type, **arguments: Any) -> Deferred:
        return chan.callRemote(command, **arguments).addErrback(_ignore_lost)

    def _broadcast(self, command: type, **arguments: Any) -> None:
        for chan in list(self.channels):
            self._send(chan, command, **arguments)

    def _configured(self, answer: dict | None, slot: int) -> None:
        if answer is not None and not answer["applied"]:
            log.error("worker {slot} kept its previous configuration: {reason}", slot=slot, reason=answer["reason"])

    def _changed(self, name: str, certified: CertifiedKey | None) -> None:
        # Changes within one reactor turn (a bulk load, a certificate with
        # several names) go out together.
        self._pending[name] = None
        if certified is not None:
            self._pending_certificates.add(id(certified))
        if self._flush_call is None:
            self._flush_call = self._reactor.callLater(0, self.flush)

    def flush(self) -> None:
        """
        Tell every worker the names whose certificates changed since the
        last time, with what the master's lookup now answers for each.
        """
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        pending, self._pending = list(self._pending), {}
        changed, self._pending_certificates = len(self._pending_certificates), set()
        if not pending or not self.channels:
            return
        # A bulk change (a load from storage: 100,000 certificates) goes
        # out as names only: encoding every certificate for notices the
        # workers mostly ignore blocked the master for seconds and queued
        # ~1.6 KB per name per worker at once (the master kept +126 MiB of
        # heap after a 100,000 load, bench/RESULTS.md issue 11); a worker
        # fetches again the few names it holds.
        carry = changed <= BULK_CERTIFICATES
        for group in channel.in_groups(pending):
            # What FetchCertificates would answer for these names now (one
            # encoding for every worker): a worker holding one replaces it
            # from the notice, with no fetch.
            self._broadcast(
                channel.CertificatesChanged, names=group,
                certificates=self.fetch(group)["certificates"] if carry else [],
            )

    def reconfigure(self, new: Any) -> None:
        """
        A reload was applied: every worker gets the new settings (and
        fallback); with changed TLS listeners (already opened and listed by
        the daemon), a new generation of workers.
        """
        self.supervisor.drain_deadline = new.workers_drain_timeout
        tls = frozenset(new.listen.tls)
        if tls != self._tls:
            # (Listing the same endpoints in another order changes nothing.)
            self._tls = tls
            self._relisten()
        self.flush()
        fallback = self._daemon.cache.fallback
        if fallback is not self._fallback:
            self._fallback = fallback
            self._broadcast(channel.SetFallback, certificate=channel.encode_certificate(fallback))
        settings = channel.worker_settings(new)
        for chan in list(self.channels):
            self._send(chan, channel.Configure, settings=settings).addCallback(self._configured, chan.process.slot)

    def _relisten(self) -> None:
        """
        The TLS sockets changed: every worker running now may still accept
        on the ones no longer listed, which close once none does; a new
        generation starts on the sockets listed now.
        """
        unlisted = self.listeners.unlisted
        for _, waiting in self._closing:
            # A socket listed again is the new generation's: never closed here.
            waiting[:] = [description for description in waiting if description in unlisted]
        removed = [d for d in unlisted if not any(d in waiting for _, waiting in self._closing)]
        holders = (set(self.supervisor.processes.values()) | set(self.supervisor.superseded)) - self._stopped
        log.info("TLS listeners changed: starting a new generation of {count} worker(s)",
                 count=self.supervisor.count)
        if removed:
            self._closing.append((holders, removed))
            self._release()
        self.supervisor.renew()

    def stopped_accepting(self, process: WorkerProcess) -> None:
        """A worker closed its listening sockets (draining), or ended."""
        if not process.ended.called:
            self._stopped.add(process)
        for holders, _ in self._closing:
            holders.discard(process)
        self._release()

    def _release(self) -> None:
        still = []
        for holders, removed in self._closing:
            if holders:
                still.append((holders, removed))
            else:
                self.listeners.close_unlisted(removed)
        self._closing = still

    # -- what the workers ask ------------------------------------------------------

    def fetch(self, names: list[str]) -> dict:
        """
        :class:`channel.FetchCertificates`: for each server name, the
        certificate this cache's lookup picks (exact, then a wildcard one
        label deep), grouped by certificate; ``absent`` for the fallback.
        """
        cache = self._daemon.cache
        grouped: dict[int, tuple[CertifiedKey, list[str]]] = {}
        absent = []
        for name in names:
            certified = cache.lookup(name.lower())
            if certified is cache.fallback:
                absent.append(name)
            else:
                grouped.setdefault(id(certified), (certified, []))[1].append(name)
        return {
            "certificates": [channel.encode_certificate(certified, found) for certified, found in grouped.values()],
            "absent": absent,
        }

    def ask(self, name: str) -> Deferred | dict:
        """
        :class:`channel.AskCertificate`: the manager's gate (it starts the
        order, or joins the one running), answered when it opens (the
        worker then fetches the certificate, if issued).
        """
        name = name.lower()
        cache = self._daemon.cache
        gate = self._daemon.manager

        def answer(_: object = None) -> dict:
            self.flush()
            return {"found": cache.lookup(name) is not cache.fallback}

        waiting = gate.before_handshake(name) if gate is not None else None
        if waiting is None:
            return answer()
        return waiting.addBoth(answer)

    def challenge(self, name: str) -> Deferred:
        """
        :class:`channel.ChallengeCertificate`: the pending tls-alpn-01 key
        authorization for ``name`` (this process's memory, then storage).
        """
        return self._daemon.alpn_keys.get(name.lower()).addCallback(lambda found: {"key_authorization": found})

    @property
    def counters(self) -> dict[int, dict]:
        """The last report of the current worker of each slot."""
        current = self.supervisor.processes
        return {
            process.slot: counters for process, counters in self.reports.items()
            if current.get(process.slot) is process
        }

    def report(self, process: WorkerProcess, counters: dict) -> None:
        """A worker's counters: kept, and summed into the master's handshake counters."""
        if process.ended.called:
            return  # a late report: its last one is already in the sums
        self.reports[process] = counters
        self._sum()

    def _retire(self, process: WorkerProcess) -> None:
        self.stopped_accepting(process)
        self._stopped.discard(process)
        # A dead worker's counts stay in the sums (counters never go down).
        last = self.reports.pop(process, None)
        if last is not None:
            self._retired.update(last.get("handshakes", {}))
            for part in SUMMED_PARTS:
                self._retired.update({part + ":" + k: v for k, v in last.get(part, {}).items()})
            self._sum()

    def _sum(self) -> None:
        handshakes = self._daemon.tls_factory.handshakes
        handshakes.clear()
        # Handshake outcomes are kept unprefixed (they have no ":").
        handshakes.update({k: v for k, v in self._retired.items() if ":" not in k})
        for counters in self.reports.values():
            handshakes.update(counters.get("handshakes", {}))

    def summed(self, part: str) -> dict[str, int]:
        """
        One of :data:`SUMMED_PARTS` of the workers' reports, every worker
        together (dead ones too: counters never go down).
        """
        prefix = part + ":"
        total: collections.Counter[str] = collections.Counter(
            {k[len(prefix):]: v for k, v in self._retired.items() if k.startswith(prefix)}
        )
        for counters in self.reports.values():
            total.update(counters.get(part, {}))
        return dict(total)

    def totals(self) -> dict:
        """
        Handshakes, open connections, relayed bytes and the lean engine's
        connections by path of every worker together (dead ones too).
        """
        return {
            "handshakes": dict(self._daemon.tls_factory.handshakes),
            "connections": sum(c.get("connections", 0) for c in self.reports.values()),
            "bytes": self.summed("bytes"),
            "engine": self.summed("engine"),
        }

    def status(self) -> dict:
        """What ``GET /status`` says of the workers."""
        return {
            "count": self.supervisor.count,
            "running": sorted(self.supervisor.processes),
            "restarts": self.supervisor.restarts,
            "previous_generation": sorted(process.pid for process in self.supervisor.superseded
                                          if process.pid is not None),
            "total": self.totals(),
            "per_worker": {
                str(slot): dict(counters, running=slot in self.supervisor.processes)
                for slot, counters in sorted(self.counters.items())
            },
        }
