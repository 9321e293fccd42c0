"""
A real Pebble (Let's Encrypt's RFC 8555 test CA) for the tests, with what
it needs around it: a listener certificate from a throwaway CA, a DNS stub
that resolves every name to 127.0.0.1, and an http-01 responder.

Usage, in a reactor-backed ``twisted.trial.unittest.TestCase``::

    async def test_something(self):
        tokens = MemoryChallengeTokenStore(reactor)
        http_port = start_http01_responder(self, tokens)  # or the daemon's port 80
        pebble = await PebbleFixture.start(self, http_port, nonce_reject=50)
        http = make_http_client(reactor, pebble.ca_bundle)
        ... pebble.directory_url ...
        roots = await pebble.roots()  # roots[0] anchors the default chain

Pebble starts in about half a second (it makes its CA keys first), so one
per test is affordable.

Everything listens on 127.0.0.1 on free ports and is stopped (Pebble by its
PID) by ``addCleanup``; nothing is left for trial's dirty-reactor check.
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any, Optional, Sequence

import attrs
from cryptography import x509
from twisted.internet import reactor, tcp
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.names import common, dns, server
from twisted.trial.unittest import TestCase

from kongacme.acme.trust import make_http_client
from kongacme.interfaces import IChallengeTokenStore
from kongacme.testing import TestCA
from kongacme.tls.certs import CertifiedKey
from kongacme.web.challenge import make_http_factory

PEBBLE = "/usr/bin/pebble"
#: Pebble's seconds to start (it generates its CA keys first), generously.
START_TIMEOUT = 15.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def open_connections() -> set:
    """The TCP connections the reactor watches now."""
    watched = set(reactor.getReaders()) | set(reactor.getWriters())
    return {s for s in watched if isinstance(s, tcp.Connection)}


def settle(timeout: float = 5.0) -> Deferred[None]:
    """Wait until the reactor watches no TCP connection (trial wants that)."""

    async def wait() -> None:
        deadline = reactor.seconds() + timeout
        while reactor.seconds() < deadline and open_connections():
            await deferLater(reactor, 0.01, lambda: None)

    return Deferred.fromCoroutine(wait())


class LoopbackAuthority(common.ResolverBase):
    """
    Answers every A query with 127.0.0.1 and every other query with an
    empty NOERROR, so Pebble validates any name against this machine.
    """

    def _lookup(self, name: bytes, cls: int, type: int, timeout: Any) -> Deferred:
        if type == dns.A:
            answer = dns.RRHeader(
                name=name, type=dns.A, cls=dns.IN, ttl=60, auth=True, payload=dns.Record_A("127.0.0.1", ttl=60)
            )
            return succeed(([answer], [], []))
        return succeed(([], [], []))

    def query(self, query: dns.Query, timeout: Any = None) -> Deferred:
        # Types without a lookup method (CAA, HTTPS …) get NOERROR too.
        return self._lookup(query.name.name, query.cls, query.type, timeout)


def start_dns(test_case: TestCase) -> int:
    """
    Run the loopback DNS stub on UDP and TCP 127.0.0.1 (same port) until the
    test ends.

    :return: the port.
    """
    factory = server.DNSServerFactory(authorities=[LoopbackAuthority()])
    for _ in range(20):
        udp = reactor.listenUDP(0, dns.DNSDatagramProtocol(controller=factory), interface="127.0.0.1")
        port = udp.getHost().port
        try:
            tcp_port = reactor.listenTCP(port, factory, interface="127.0.0.1")
        except CannotListenError:
            udp.stopListening()
            continue
        test_case.addCleanup(udp.stopListening)
        test_case.addCleanup(tcp_port.stopListening)
        return port
    raise RuntimeError("no free port for the DNS stub")


def start_http01_responder(test_case: TestCase, token_store: IChallengeTokenStore) -> int:
    """
    Serve ``/.well-known/acme-challenge/<token>`` from ``token_store`` (the
    daemon's port-80 resource) on 127.0.0.1 until the test ends.

    :return: the port, to give Pebble as ``http_port``.
    """
    site = make_http_factory(token_store, "not_found", lambda: None, None, 8192, 10, reactor)
    port = reactor.listenTCP(0, site, interface="127.0.0.1")

    async def stop() -> None:
        await port.stopListening()
        await settle()

    test_case.addCleanup(lambda: Deferred.fromCoroutine(stop()))
    return port.getHost().port


def listener_certificate(ca: TestCA) -> CertifiedKey:
    """A leaf for Pebble's HTTPS: DNS ``localhost`` and IP ``127.0.0.1``."""
    return ca.issue(["localhost"], ips=["127.0.0.1"], days=7, include_ca=True)


class _PebbleProcess(ProcessProtocol):
    def __init__(self) -> None:
        self.output = b""
        self.ended: Deferred[None] = Deferred()
        self.running = True

    def outReceived(self, data: bytes) -> None:
        self.output += data
        if len(self.output) > 1_000_000:
            self.output = self.output[-500_000:]

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        self.running = False
        self.ended.callback(None)


@attrs.define
class PebbleFixture:
    """
    A running Pebble.

    :ivar directory_url: the ACME directory, ``https://127.0.0.1:PORT/dir``.
    :ivar management_url: the management interface (``/roots/0`` …).
    :ivar ca_bundle: PEM file that makes both trusted (give it to
        :func:`kongacme.acme.trust.make_http_client`).
    :ivar workdir: config, certificates.
    :ivar dns_port: the DNS stub's port.
    :ivar http_port: where Pebble validates http-01.
    """

    directory_url: str
    management_url: str
    ca_bundle: str
    workdir: str
    dns_port: int
    http_port: int
    _process: Any
    _protocol: _PebbleProcess

    @property
    def pid(self) -> int:
        """Pebble's process id."""
        return self._process.pid

    @property
    def output(self) -> str:
        """What Pebble logged so far."""
        return self._protocol.output.decode("utf-8", "replace")

    @classmethod
    def start(
        cls,
        test_case: TestCase,
        http_port: int,
        *,
        tls_port: Optional[int] = None,
        nonce_reject: Optional[int] = None,
        authz_reuse: Optional[int] = None,
        alternate_roots: Optional[int] = None,
        chain_length: Optional[int] = None,
        va_nosleep: bool = True,
        eab_keys: Optional[dict[str, str]] = None,
        domain_blocklist: Sequence[str] = (),
        validity: Optional[int] = None,
        env: Optional[dict[str, str]] = None,
        dns_port: Optional[int] = None,
    ) -> Deferred["PebbleFixture"]:
        """
        Start Pebble (and the DNS stub) for ``test_case``; both are stopped
        by its cleanups.

        :param http_port: the port of the test's http-01 responder.
        :param tls_port: Pebble's ``tlsPort`` (tls-alpn-01), default a free
            port nobody listens on.
        :param nonce_reject: ``PEBBLE_WFE_NONCEREJECT`` (Pebble: 5).
        :param authz_reuse: ``PEBBLE_AUTHZREUSE`` (Pebble: 50).
        :param alternate_roots: ``PEBBLE_ALTERNATE_ROOTS``.
        :param chain_length: ``PEBBLE_CHAIN_LENGTH``.
        :param va_nosleep: ``PEBBLE_VA_NOSLEEP=1`` (no 0–15 s validation
            delay).
        :param eab_keys: ``{kid: base64url HMAC key}``; makes EAB required.
        :param domain_blocklist: names Pebble refuses to issue for.
        :param validity: ``certificateValidityPeriod`` in seconds.
        :param env: more environment variables.
        :param dns_port: a DNS server on 127.0.0.1 Pebble resolves every
            name with (a BIND of ``tests.bind``), instead of the stub.
        :return: ``Deferred`` firing with the fixture once the directory
            answers.
        """
        workdir = os.path.abspath(test_case.mktemp())
        os.makedirs(workdir)
        ca = TestCA.create("kongacme Pebble listener CA")
        listener = listener_certificate(ca)
        paths = {
            name: os.path.join(workdir, name) for name in ("ca.pem", "listener.crt", "listener.key", "pebble.json")
        }
        ca.write_ca(paths["ca.pem"])
        with open(paths["listener.crt"], "wb") as f:
            f.write(listener.chain_pem())
        with open(paths["listener.key"], "wb") as f:
            f.write(listener.key_pem())
        if dns_port is None:
            dns_port = start_dns(test_case)
        environment = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        if va_nosleep:
            environment["PEBBLE_VA_NOSLEEP"] = "1"
        for name, value in (
            ("PEBBLE_WFE_NONCEREJECT", nonce_reject),
            ("PEBBLE_AUTHZREUSE", authz_reuse),
            ("PEBBLE_ALTERNATE_ROOTS", alternate_roots),
            ("PEBBLE_CHAIN_LENGTH", chain_length),
        ):
            if value is not None:
                environment[name] = str(value)
        environment.update(env or {})

        async def launch() -> PebbleFixture:
            last_error = ""
            # A "free" port can be taken by a concurrent test between our
            # probe and Pebble's bind: then Pebble exits and we try again.
            for _ in range(3):
                pebble_config: dict[str, Any] = {
                    "listenAddress": "127.0.0.1:%d" % (free_port(),),
                    "managementListenAddress": "127.0.0.1:%d" % (free_port(),),
                    "certificate": paths["listener.crt"],
                    "privateKey": paths["listener.key"],
                    "httpPort": http_port,
                    "tlsPort": tls_port if tls_port is not None else free_port(),
                    "ocspResponderURL": "",
                    "externalAccountBindingRequired": bool(eab_keys),
                }
                if eab_keys:
                    pebble_config["externalAccountMACKeys"] = dict(eab_keys)
                if domain_blocklist:
                    pebble_config["domainBlocklist"] = list(domain_blocklist)
                if validity is not None:
                    pebble_config["certificateValidityPeriod"] = validity
                with open(paths["pebble.json"], "w") as f:
                    json.dump({"pebble": pebble_config}, f)
                protocol = _PebbleProcess()
                args = [
                    PEBBLE,
                    "-config",
                    paths["pebble.json"],
                    "-dnsserver",
                    "127.0.0.1:%d" % (dns_port,),
                    "-strict=false",
                ]
                process = reactor.spawnProcess(protocol, PEBBLE, args, env=environment, path=workdir)
                fixture = cls(
                    directory_url="https://%s/dir" % (pebble_config["listenAddress"],),
                    management_url="https://%s" % (pebble_config["managementListenAddress"],),
                    ca_bundle=paths["ca.pem"],
                    workdir=workdir,
                    dns_port=dns_port,
                    http_port=http_port,
                    process=process,
                    protocol=protocol,
                )
                test_case.addCleanup(fixture.stop)
                if await fixture._wait_ready():
                    return fixture
                last_error = fixture.output
                await fixture.stop()
            raise RuntimeError("Pebble did not start:\n" + last_error)

        return Deferred.fromCoroutine(launch())

    async def _wait_ready(self) -> bool:
        http = make_http_client(reactor, self.ca_bundle)
        deadline = reactor.seconds() + START_TIMEOUT
        while self._protocol.running and reactor.seconds() < deadline:
            if b"Listening on" in self._protocol.output:
                try:
                    response = await http.get(self.directory_url, timeout=2)
                    await response.content()
                    if response.code == 200:
                        return True
                except Exception:
                    pass
            await deferLater(reactor, 0.01, lambda: None)
        return False

    def stop(self) -> Deferred[None]:
        """Stop Pebble by its PID (SIGTERM, then SIGKILL) and wait for it."""

        async def stop() -> None:
            if self._protocol.running:
                self._process.signalProcess("TERM")
                timer = reactor.callLater(5, self._kill)
                await self._protocol.ended
                if timer.active():
                    timer.cancel()
            await settle()

        return Deferred.fromCoroutine(stop())

    def _kill(self) -> None:
        if self._protocol.running:
            self._process.signalProcess("KILL")

    def _management_get(self, path: str) -> Deferred[Optional[bytes]]:
        async def get() -> Optional[bytes]:
            http = make_http_client(reactor, self.ca_bundle)
            response = await http.get(self.management_url + path, timeout=10)
            body = await response.content()
            return body if response.code == 200 else None

        return Deferred.fromCoroutine(get())

    def roots(self) -> Deferred[list[x509.Certificate]]:
        """
        Pebble's roots: ``/roots/0`` (the default chain's), then the
        alternates ``/roots/1`` … (with ``alternate_roots``).
        """

        async def roots() -> list[x509.Certificate]:
            found = []
            index = 0
            while True:
                body = await self._management_get("/roots/%d" % (index,))
                if body is None:
                    return found
                found.append(x509.load_pem_x509_certificate(body))
                index += 1

        return Deferred.fromCoroutine(roots())

    def intermediates(self) -> Deferred[list[x509.Certificate]]:
        """Pebble's intermediates: ``/intermediates/0`` …"""

        async def intermediates() -> list[x509.Certificate]:
            found = []
            index = 0
            while True:
                body = await self._management_get("/intermediates/%d" % (index,))
                if body is None:
                    return found
                found.append(x509.load_pem_x509_certificate(body))
                index += 1

        return Deferred.fromCoroutine(intermediates())
