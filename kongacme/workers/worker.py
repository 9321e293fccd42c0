"""
A worker process: ``python -m kongacme.workers.worker``, started by the
master (:mod:`kongacme.workers.supervisor`) with

- file descriptor 3: its end of a UNIX socketpair carrying the AMP channel
  (:mod:`kongacme.workers.channel`);
- file descriptors 4, 5, …: the master's listening TLS sockets, one per
  ``--listen FD:FAMILY[:proxy]`` argument; every worker accepts on the
  same sockets (the kernel hands each connection to one of them); on a
  ``:proxy`` one (``haproxy:`` in ``listen.tls``) every connection starts
  with a PROXY header, read before the ClientHello, and the client it
  declares is the peer the worker logs and forwards;
- standard output: log events as JSON lines (:mod:`kongacme.workers.logrelay`).

It serves the TLS listener and the proxy with its own bounded certificate
cache, filled from the master on first use of a name
(:mod:`kongacme.workers.certcache`), and nothing else: it imports neither storage, the
ACME client, the web stack, issuance, renewal nor fleet code (memory and
start-up time). It exits when the master dies (``PR_SET_PDEATHSIG``) or
closes the channel.
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import os
import signal
import socket
import sys
from typing import Any, Sequence

import attrs
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred, succeed
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.internet.protocol import Factory, connectionDone
from twisted.internet.task import LoopingCall
from twisted.logger import Logger, globalLogBeginner
from twisted.protocols import amp
from twisted.protocols.haproxy import proxyEndpoint
from twisted.python.failure import Failure
from zope.interface import implementer

from kongacme.connlimit import ConnectionLimiter, derive_budget, open_file_limit
from kongacme.allocator import tune_allocator
from kongacme.engine.lean import LeanEngine
from kongacme.proxy.forward import ProxyFactory, ProxyServerProtocol
from kongacme.proxy.routes import RouteTable
from kongacme.tls.context import ContextBuilder
from kongacme.tls.alpn_challenge import ChallengeResponder
from kongacme.tls.protocol import TLSServerFactory
from kongacme.workers import channel
from kongacme.workers.certcache import CertificateFetcher, WorkerCertificateCache
from kongacme.workers.logrelay import LineWriter

#: The AMP channel's file descriptor in a worker.
AMP_FD = 3

#: Seconds between two counter reports to the master.
REPORT_INTERVAL = 1.0

_PR_SET_PDEATHSIG = 1

log = Logger()


class CountingProxy(ProxyServerProtocol):
    """A proxied connection whose bytes are added to its factory's totals when it ends."""

    factory: "CountingProxyFactory"

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        try:
            super().connectionLost(reason)
        finally:
            self.factory.bytes["from_clients"] += self.received_from_client
            self.factory.bytes["from_upstreams"] += self.received_from_upstream
            self.received_from_client = self.received_from_upstream = 0


@attrs.define(slots=False, eq=False)
class CountingProxyFactory(ProxyFactory):
    """
    :class:`ProxyFactory` counting the bytes relayed by connections that
    ended.

    :ivar bytes: ``from_clients`` and ``from_upstreams`` totals.
    """

    bytes: collections.Counter = attrs.field(factory=collections.Counter)

    protocol = CountingProxy


@implementer(IStreamServerEndpoint)
@attrs.frozen
class InheritedSocket:
    """
    The endpoint of a listening socket inherited from the master: listening
    adopts it (a duplicate; the inherited descriptor is the caller's to
    close). Twisted's ``proxyEndpoint`` wraps it as it wraps the ``tcp:``
    endpoint of a ``haproxy:tcp:…`` listener in one process.
    """

    _reactor: Any
    fd: int
    family: int

    def listen(self, protocolFactory: Any) -> Deferred:
        return succeed(self._reactor.adoptStreamPort(self.fd, self.family, protocolFactory))


class Worker:
    """
    A worker's state: certificate cache, TLS factory, proxy, connection
    limits and the listening ports it adopted.

    :param reactor: the reactor.
    :param listen: ``(file descriptor, address family, PROXY protocol)`` of
        each inherited listening socket.
    :param slot: the worker's number (1…N), for logs.
    """

    def __init__(self, reactor: Any, listen: Sequence[tuple[int, int, bool]], slot: int):
        self._reactor = reactor
        self._listen = list(listen)
        self.slot = slot
        self.channel: WorkerChannel | None = None
        self.cache: WorkerCertificateCache | None = None
        self.settings: channel.WorkerSettings | None = None
        self.builder = ContextBuilder(reactor)
        self.router = RouteTable()
        self.proxy_factory = CountingProxyFactory(self.router, reactor)
        self.tls_factory: TLSServerFactory | None = None
        #: The lean engine (``listen.engine: lean``), once accepting.
        self.lean: LeanEngine | None = None
        self.gate: CertificateFetcher | None = None
        self.limiter: ConnectionLimiter | None = None
        self._nofile: int | None = None
        self.ports: list[IListeningPort] = []
        self.draining = False
        self._reporter = LoopingCall(self.report)
        self._reporter.clock = reactor

    # -- from the master -----------------------------------------------------

    def configure(self, data: dict) -> tuple[bool, str | None]:
        """Apply the master's :class:`channel.Configure`; refused: keep the old settings."""
        try:
            settings = channel.read_settings(data)
            router = RouteTable.from_config(settings.routes, settings.default_route)
            from kongacme.config.daemon import LimitsConfig

            limits = LimitsConfig(**settings.limits)
            if self._nofile is None:
                _, self._nofile = open_file_limit(limits.raise_nofile)
            budget = derive_budget(limits, self._nofile)
        except (ValueError, TypeError) as e:
            log.error("worker {slot}: configuration refused, keeping the previous one: {reason}",
                      slot=self.slot, reason=str(e))
            return False, str(e)
        old, self.settings = self.settings, settings
        self.router = router
        self.proxy_factory.router = router
        self.proxy_factory.connect_timeout = settings.proxy["connect_timeout"]
        self.proxy_factory.idle_timeout = settings.proxy["idle_timeout"]
        tickets = (settings.tls["session_tickets"], settings.tls["ticket_key_rotation"])
        if old is None or tickets != (old.tls["session_tickets"], old.tls["ticket_key_rotation"]):
            self.builder.session_tickets, self.builder.ticket_key_rotation = tickets
            self.builder.forget_all()
        if self.limiter is None:
            self.limiter = ConnectionLimiter(self._reactor, budget)
        else:
            self.limiter.reconfigure(budget)
        if self.cache is not None:
            self.cache.resize(settings.tls["cache_size"])
        if self.tls_factory is not None:
            self._tune_tls()
        _set_log_level(settings.log_level)
        if old is not None:
            log.info("worker {slot}: reload applied ({routes} route(s))", slot=self.slot, routes=len(settings.routes))
        return True, None

    def set_fallback(self, entry: dict) -> None:
        """The fallback certificate (the cache is made with the first one)."""
        _, fallback = channel.decode_certificate(entry)
        if self.cache is None:
            size = self.settings.tls["cache_size"] if self.settings is not None else 10_000
            self.cache = WorkerCertificateCache(fallback, size)
            self.gate = CertificateFetcher(self.cache, self.call)
        else:
            self.cache.fallback = fallback

    def changed(self, names: list[str], certificates: Sequence[dict] = ()) -> None:
        """
        :class:`channel.CertificatesChanged`: replace what the worker holds
        of these names from ``certificates``, drop and fetch again the rest.
        """
        if self.gate is not None:
            self.gate.refresh(names, certificates)

    def start(self) -> None:
        """Build the TLS listener and accept on the inherited sockets."""
        if self.tls_factory is not None:
            return
        if self.cache is None or self.settings is None or self.limiter is None:
            raise RuntimeError("Start before Configure and SetFallback")
        self.tls_factory = TLSServerFactory(
            self.cache,
            self.builder,
            self.proxy_factory,
            self._reactor,
            alpn_for=self.proxy_factory.alpn_for,
            gate=self.gate,
        )
        self.tls_factory.challenges = ChallengeResponder(self._key_authorization, self._reactor)
        self._tune_tls()
        limit = self.limiter.listener("tls")
        serving = limit.wrap(self.tls_factory)
        if self.settings.engine == "lean":
            self.lean = LeanEngine(self._reactor, self.tls_factory, self.proxy_factory)
        for fd, family, proxied in self._listen:
            inherited = InheritedSocket(self._reactor, fd, family)
            endpoint = proxyEndpoint(inherited) if proxied else inherited
            # Adopting is synchronous: the port is there when listen returns.
            endpoint.listen(serving).addCallback(self._lean, proxied, serving, limit).addCallback(self._adopted, limit)
            os.close(fd)  # adoptStreamPort took a duplicate
        self._reporter.start(REPORT_INTERVAL, now=False)
        log.info("worker {slot} (pid {pid}) accepting: {routes} route(s), certificates for up to {size} name(s)",
                 slot=self.slot, pid=os.getpid(), routes=len(self.settings.routes), size=self.cache.size)

    def _lean(self, port: IListeningPort, proxied: bool, serving: Any, limit: Any) -> IListeningPort:
        """``port``, accepted on by the lean engine if there is one (not for ``haproxy:`` sockets)."""
        if self.lean is None:
            return port
        taken = None if proxied else self.lean.take("", port, serving, limit)
        if taken is None:
            log.info("worker {slot}: a haproxy: TLS socket is served by the Twisted engine "
                     "(listen.engine: lean reads no PROXY header)", slot=self.slot)
            return port
        log.info("worker {slot}: TLS socket served by the lean engine", slot=self.slot)
        return taken

    def _adopted(self, port: IListeningPort, limit: Any) -> None:
        limit.track(port)
        self.ports.append(port)

    def _tune_tls(self) -> None:
        assert self.tls_factory is not None and self.settings is not None and self.gate is not None
        self.tls_factory.handshake_timeout = self.settings.tls["handshake_timeout"]
        self.tls_factory.gate_timeout = self.settings.gate_timeout
        self.gate.ask_master = self.settings.ask_master

    def _key_authorization(self, name: str) -> Deferred:
        # tls-alpn-01: the master has the pending challenges (no storage here).
        answer = self.call(channel.ChallengeCertificate, name=name)
        return answer.addCallback(lambda found: found.get("key_authorization"))

    def call(self, command: type, **arguments: object) -> Deferred:
        """Send ``command`` to the master (a Deferred that never fires once the channel is gone)."""
        if self.channel is None:
            return Deferred()
        return self.channel.callRemote(command, **arguments)

    def drain(self, deadline: float) -> Deferred:
        """
        Stop accepting; fire with the number of connections still open once
        none is, or after ``deadline`` seconds.
        """
        self.draining = True
        ports, self.ports = self.ports, []
        if ports:
            closed = DeferredList([maybeDeferred(port.stopListening) for port in ports], consumeErrors=True)
            closed.addCallback(self._stopped_accepting)
        limit = self.limiter.listener("tls") if self.limiter is not None else None
        done: Deferred = Deferred()
        until = self._reactor.seconds() + deadline

        def check() -> None:
            open_now = limit.in_use if limit is not None else 0
            if open_now == 0 or self._reactor.seconds() >= until:
                done.callback(open_now)
            else:
                self._reactor.callLater(0.05, check)

        check()
        return done

    def _stopped_accepting(self, _: object) -> None:
        # Our copies are closed: the master may now close a socket a reload removed.
        if self.channel is not None:
            self.channel.callRemote(channel.StoppedAccepting)

    # -- to the master -------------------------------------------------------

    def counters(self) -> dict:
        """What :class:`channel.Counters` reports."""
        limit = self.limiter.listener("tls") if self.limiter is not None else None
        return {
            "pid": os.getpid(),
            "handshakes": dict(self.tls_factory.handshakes) if self.tls_factory is not None else {},
            "connections": limit.in_use if limit is not None else 0,
            # The worker's own TLS limit (limits apply per worker): the
            # master's /metrics sums these into listener="tls".
            "connections_limit": limit.cap if limit is not None else 0,
            "paused": bool(limit.paused) if limit is not None else False,
            "refused": limit.refused if limit is not None else 0,
            "bytes": dict(self.proxy_factory.bytes),
            # The lean engine's connections by path ({} on the Twisted engine).
            "engine": self.lean.connections() if self.lean is not None else {},
            "certificates": len(self.cache) if self.cache is not None else 0,
            "certificate_fetches": self.gate.fetches if self.gate is not None else 0,
            "certificate_evictions": self.cache.evictions if self.cache is not None else 0,
        }

    def report(self) -> None:
        """Send the counters (nothing while the channel is down)."""
        if self.channel is not None:
            self.channel.callRemote(channel.Counters, counters=self.counters())


class WorkerChannel(amp.AMP):
    """The worker's end of the AMP channel: applies what the master sends."""

    def __init__(self, worker: Worker, on_lost: Any):
        super().__init__()
        self.worker = worker
        self._on_lost = on_lost

    def connectionMade(self) -> None:
        super().connectionMade()
        self.worker.channel = self

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        self.worker.channel = None
        self._on_lost()

    @channel.Configure.responder
    def configure(self, settings: dict) -> dict:
        applied, reason = self.worker.configure(settings)
        return {"applied": applied, "reason": reason}

    @channel.SetFallback.responder
    def set_fallback(self, certificate: dict) -> dict:
        self.worker.set_fallback(certificate)
        return {}

    @channel.CertificatesChanged.responder
    def certificates_changed(self, names: list, certificates: list) -> dict:
        self.worker.changed(names, certificates)
        return {}

    @channel.Start.responder
    def start(self) -> dict:
        self.worker.start()
        return {}

    @channel.Drain.responder
    def drain(self, deadline: float) -> Deferred:
        return self.worker.drain(deadline).addCallback(lambda remaining: {"remaining": remaining})


_writer: LineWriter | None = None


def _set_log_level(level: str) -> None:
    if _writer is not None:
        _writer.level = level


def die_with_parent(master_pid: int) -> None:
    """
    Ask the kernel for SIGTERM when the master dies (Linux), and exit now
    if it already has.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the channel's end still stops the worker
    if os.getppid() != master_pid:
        sys.exit(0)


_FAMILIES = {"AF_INET": socket.AF_INET, "AF_INET6": socket.AF_INET6, "AF_UNIX": socket.AF_UNIX}


def parse_arguments(argv: Sequence[str]) -> argparse.Namespace:
    """The worker's command line (written by the master)."""
    parser = argparse.ArgumentParser(prog="python -m kongacme.workers.worker")
    parser.add_argument("--slot", type=int, required=True)
    parser.add_argument("--master-pid", type=int, required=True)
    parser.add_argument(
        "--listen", action="append", default=[], help="FD:FAMILY[:proxy] of a listening socket"
    )
    options = parser.parse_args(argv)
    options.listen = [_listen_argument(parser, value) for value in options.listen]
    return options


def _listen_argument(parser: argparse.ArgumentParser, value: str) -> tuple[int, int, bool]:
    fd, _, rest = value.partition(":")
    family, _, proxy = rest.partition(":")
    if not fd.isdigit() or family not in _FAMILIES or proxy not in ("", "proxy"):
        parser.error("--listen: expected FD:FAMILY[:proxy], got %r" % (value,))
    return int(fd), _FAMILIES[family], proxy == "proxy"


def main(argv: Sequence[str] | None = None) -> None:
    """Run a worker until the master says to stop, closes the channel, or dies."""
    global _writer
    options = parse_arguments(sys.argv[1:] if argv is None else argv)
    die_with_parent(options.master_pid)
    tune_allocator()  # as the master did (kongacme.tap): an exec'd worker starts with glibc's defaults
    _writer = LineWriter(sys.stdout)
    globalLogBeginner.beginLoggingTo([_writer], redirectStandardIO=False)

    from twisted.internet import reactor

    worker = Worker(reactor, options.listen, options.slot)

    def lost() -> None:
        if reactor.running:
            # Drained, or the master is gone: nothing more to do here.
            reactor.callLater(0 if not worker.draining else 0.1, reactor.stop)

    def terminated() -> None:
        if os.getppid() != options.master_pid or worker.draining:
            reactor.stop()  # the master died (PR_SET_PDEATHSIG), or a second SIGTERM
            return
        # The master lives: systemd signalled every process of the unit.
        # Finish what is in flight, as the master's drain would.
        deadline = worker.settings.drain_timeout if worker.settings is not None else 10.0
        worker.drain(deadline).addBoth(lambda _: reactor.stop())

    def handle_term() -> None:
        signal.signal(signal.SIGTERM, lambda signum, frame: reactor.callFromThread(terminated))

    factory = Factory.forProtocol(lambda: WorkerChannel(worker, lost))
    reactor.adoptStreamConnection(AMP_FD, socket.AF_UNIX, factory)
    os.close(AMP_FD)
    reactor.callWhenRunning(handle_term)
    reactor.run()


if __name__ == "__main__":
    main()
