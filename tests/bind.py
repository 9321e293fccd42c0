"""
A real BIND 9 (``named -g``, Debian's ``bind9``) for the dns-01 tests: one
primary zone on 127.0.0.1 and a free high port, accepting RFC 2136 updates
signed with a TSIG key, with a ``*`` A record to 127.0.0.1 so Pebble
pointed at it resolves every name of the zone here.

Usage, in a reactor-backed ``twisted.trial.unittest.TestCase``::

    bind = await BindFixture.start(self, "example.test")
    pebble = await PebbleFixture.start(self, http_port, dns_port=bind.port)
    ... bind.dns01_config() ...  # issuance.dns01
    await bind.txt("_acme-challenge.a.example.test")  # [] once cleaned up

It runs as this user (no privileges: the port is high), in a directory of
its own (named rewrites the zone and writes a journal), and is stopped by
its PID in a cleanup.
"""

from __future__ import annotations

import base64
import os
import shutil
from typing import Any

import attrs
import dns.message
import dns.rdatatype
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import SkipTest, TestCase

from kongacme.dns.transport import DNSClient
from tests.pebble import free_port

NAMED = shutil.which("named") or "/usr/sbin/named"
#: Seconds named gets to say "running".
START_TIMEOUT = 20.0
KEY_NAME = "acme-key"


class _NamedProcess(ProcessProtocol):
    def __init__(self) -> None:
        self.output = b""
        self.ended: Deferred[None] = Deferred()
        self.running = True

    def outReceived(self, data: bytes) -> None:
        self.output = (self.output + data)[-500_000:]

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        self.running = False
        self.ended.callback(None)


@attrs.define
class BindFixture:
    """
    A running named.

    :ivar zone: the zone it is primary for.
    :ivar port: UDP and TCP port on 127.0.0.1.
    :ivar secret: the TSIG key's secret, base64.
    :ivar workdir: config, zone file, journal.
    """

    zone: str
    port: int
    secret: str
    workdir: str
    _process: Any
    _protocol: _NamedProcess
    #: The test it runs for.
    test_case: Any = None

    @property
    def output(self) -> str:
        """What named logged so far."""
        return self._protocol.output.decode("utf-8", "replace")

    @property
    def server(self) -> str:
        """``127.0.0.1:port``."""
        return "127.0.0.1:%d" % (self.port,)

    def dns01_config(self, **changes: Any) -> dict[str, Any]:
        """An ``issuance.dns01`` section for this server (``changes`` override)."""
        config: dict[str, Any] = {
            "server": self.server,
            "tsig_key_name": KEY_NAME,
            "tsig_secret": self.secret,
            "propagation_timeout": 10,
            "ttl": 5,
        }
        config.update(changes)
        return config

    @classmethod
    def start(cls, test_case: TestCase, zone: str = "example.test") -> Deferred["BindFixture"]:
        """
        Start named for ``test_case`` (stopped by its cleanups); skip the
        test when BIND is not installed (``scripts/bootstrap`` installs it).
        """
        if not os.path.exists(NAMED):
            raise SkipTest("BIND 9 (named) is not installed: apt-get install bind9")
        workdir = os.path.abspath(test_case.mktemp())
        os.makedirs(workdir)
        secret = base64.b64encode(os.urandom(32)).decode()

        async def launch() -> BindFixture:
            last = ""
            for _ in range(3):  # a "free" port may be taken meanwhile
                port = free_port()
                cls.write_files(workdir, zone, port, secret)
                protocol = _NamedProcess()
                args = [NAMED, "-g", "-c", os.path.join(workdir, "named.conf")]
                if os.getuid() == 0:
                    args += ["-u", "root"]  # no switch to the bind user, which cannot read the test's directory
                process = reactor.spawnProcess(protocol, NAMED, args, env={"PATH": "/usr/bin:/bin"}, path=workdir)
                fixture = cls(zone, port, secret, workdir, process, protocol, test_case)
                test_case.addCleanup(fixture.stop)
                deadline = reactor.seconds() + START_TIMEOUT
                # "running" can come before the zone is loaded.
                while protocol.running and reactor.seconds() < deadline and not fixture._ready():
                    await deferLater(reactor, 0.05, lambda: None)
                if fixture._ready():
                    return fixture
                last = fixture.output
                await fixture.stop()
            raise RuntimeError("named did not start:\n" + last)

        return Deferred.fromCoroutine(launch())

    def _ready(self) -> bool:
        output = self._protocol.output
        return b"running" in output and b"zone %s/IN: loaded serial" % (self.zone.encode(),) in output

    @staticmethod
    def write_files(workdir: str, zone: str, port: int, secret: str) -> None:
        """named.conf, the TSIG key and the zone file for ``zone`` on ``port``, in ``workdir``."""
        files = {
            "key.conf": 'key "%s" { algorithm hmac-sha256; secret "%s"; };\n' % (KEY_NAME, secret),
            "named.conf": (
                'include "{d}/key.conf";\n'
                'options {{ directory "{d}"; listen-on port {p} {{ 127.0.0.1; }}; listen-on-v6 {{ none; }};\n'
                '  pid-file "{d}/named.pid"; recursion no; dnssec-validation no; }};\n'
                'zone "{z}" {{ type primary; file "{d}/{z}.zone"; allow-update {{ key "{k}"; }}; }};\n'
            ).format(d=workdir, p=port, z=zone, k=KEY_NAME),
            zone + ".zone": (
                "$TTL 60\n"
                "@ IN SOA ns.{z}. admin.{z}. ( 1 60 60 600 60 )\n"
                "@ IN NS ns.{z}.\n"
                "ns IN A 127.0.0.1\n"
                "@ IN A 127.0.0.1\n"
                "* IN A 127.0.0.1\n"
            ).format(z=zone),
        }
        for name, text in files.items():
            with open(os.path.join(workdir, name), "w") as f:
                f.write(text)
        journal = os.path.join(workdir, zone + ".zone.jnl")
        if os.path.exists(journal):
            os.remove(journal)

    def txt(self, name: str) -> Deferred[list[str]]:
        """The TXT values named holds at ``name`` now."""

        async def query() -> list[str]:
            client = DNSClient(reactor)
            try:
                wire = await client.exchange(("127.0.0.1", self.port), dns.message.make_query(name, "TXT").to_wire(), 5)
            finally:
                await client.close()
            values = []
            for rrset in dns.message.from_wire(wire).answer:
                if rrset.rdtype == dns.rdatatype.TXT:
                    values += [b"".join(r.strings).decode() for r in rrset]
            return sorted(values)

        return Deferred.fromCoroutine(query())

    def stop(self) -> Deferred[None]:
        """Stop named (SIGTERM, then SIGKILL) and wait for it to exit."""

        async def stop() -> None:
            if not self._protocol.running:
                return
            self._process.signalProcess("TERM")
            timer = reactor.callLater(5, lambda: self._protocol.running and self._process.signalProcess("KILL"))
            await self._protocol.ended
            if timer.active():
                timer.cancel()

        return Deferred.fromCoroutine(stop())
