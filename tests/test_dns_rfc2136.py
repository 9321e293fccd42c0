"""
Tests for :mod:`kongacme.dns.rfc2136` and :mod:`kongacme.dns.transport`:
against a real BIND 9 (``tests.bind``), and against small in-process fake
servers for the error paths a real server does not easily give.
"""

from __future__ import annotations

import base64
import os
import struct

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
from twisted.internet import reactor
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from kongacme.dns.rfc2136 import RFC2136Records, TsigKey
from kongacme.dns.transport import DNSClient
from kongacme.errors import DNSError
from kongacme.interfaces import IDNSRecords
from tests.bind import KEY_NAME, BindFixture


def records(bind: BindFixture, secret: str | None = None, key_name: str = KEY_NAME, **kwargs) -> RFC2136Records:
    key = TsigKey.from_base64(key_name, "hmac-sha256", secret or bind.secret)
    return closed_later(bind.test_case, RFC2136Records(reactor, ("127.0.0.1", bind.port), key, **kwargs))


def closed_later(test_case: TestCase, provider: RFC2136Records) -> RFC2136Records:
    """``provider``, closed when the test ends."""
    test_case.addCleanup(provider.close)
    return provider


class RFC2136RecordsTests(TestCase):
    """Tests for RFC2136Records against a real BIND 9."""

    async def test_add_visible_remove_by_rdata(self) -> None:
        """
        Two values added at one name are both served; removing one leaves
        the other (deletion by rdata, RFC 2136 §2.5.4), then none remain.
        """
        bind = await BindFixture.start(self)
        provider = records(bind)
        verifyObject(IDNSRecords, provider)
        name = "_acme-challenge.a.example.test"
        await provider.add_txt(name, "first-value", 5)
        await provider.add_txt(name, "second-value", 5)
        self.assertEqual(await bind.txt(name), ["first-value", "second-value"])
        self.assertTrue(await provider.txt_visible(name, "first-value"))
        await provider.remove_txt(name, "first-value")
        self.assertEqual(await bind.txt(name), ["second-value"])
        self.assertFalse(await provider.txt_visible(name, "first-value"))
        await provider.remove_txt(name, "second-value")
        self.assertEqual(await bind.txt(name), [])

    async def test_zone_found_by_soa(self) -> None:
        """
        Without a configured zone, the zone of a name (apex or deeper,
        existing or not) is the owner of the SOA the server gives.
        """
        bind = await BindFixture.start(self)
        provider = records(bind)
        self.assertEqual(await provider.zone_for("_acme-challenge.x.y.example.test"), "example.test")
        self.assertEqual(await provider.zone_for("example.test"), "example.test")

    async def test_not_authoritative(self) -> None:
        """A name outside every zone of the server: a DNSError saying to set the zone."""
        bind = await BindFixture.start(self)
        error = await self.assertFailure(records(bind).add_txt("_acme-challenge.other.test", "v", 5), DNSError)
        self.assertIn("issuance.dns01.zone", str(error))

    async def test_wrong_secret(self) -> None:
        """A wrong TSIG secret: a DNSError naming BADSIG and the key, nothing written."""
        bind = await BindFixture.start(self)
        wrong = base64.b64encode(os.urandom(32)).decode()
        provider = records(bind, secret=wrong, zone="example.test")
        error = await self.assertFailure(provider.add_txt("_acme-challenge.a.example.test", "v", 5), DNSError)
        self.assertIn("BADSIG", error.reason)
        self.assertIn(KEY_NAME, error.reason)
        self.assertEqual(await bind.txt("_acme-challenge.a.example.test"), [])

    async def test_unknown_key(self) -> None:
        """A key the server does not know: a DNSError naming BADKEY."""
        bind = await BindFixture.start(self)
        provider = records(bind, key_name="other-key", zone="example.test")
        error = await self.assertFailure(provider.add_txt("_acme-challenge.a.example.test", "v", 5), DNSError)
        self.assertIn("BADKEY", error.reason)

    async def test_name_outside_configured_zone(self) -> None:
        """A configured zone that does not hold the name: refused before sending."""
        bind = await BindFixture.start(self)
        provider = records(bind, zone="example.test")
        error = await self.assertFailure(provider.add_txt("_acme-challenge.a.other.test", "v", 5), DNSError)
        self.assertIn("not in zone example.test", error.reason)


class _Answers(DatagramProtocol):
    """A fake DNS server over UDP: answers each query with ``respond(query)`` (bytes or None)."""

    def __init__(self, respond) -> None:
        self.respond = respond
        self.received = 0
        #: The last query and its sender.
        self.last = None

    def datagramReceived(self, data: bytes, addr) -> None:
        self.received += 1
        self.last = (dns.message.from_wire(data), addr)
        answer = self.respond(self.last[0])
        if answer is not None:
            assert self.transport is not None
            self.transport.write(answer, addr)


class _TCPAnswers(Protocol):
    def __init__(self, respond) -> None:
        self.respond = respond
        self.buffer = b""

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) >= 2 and len(self.buffer) >= 2 + struct.unpack("!H", self.buffer[:2])[0]:
            answer = self.respond(dns.message.from_wire(self.buffer[2:]))
            assert self.transport is not None
            self.transport.write(struct.pack("!H", len(answer)) + answer)


def fake_server(test_case: TestCase, respond, tcp_respond=None) -> tuple[_Answers, int]:
    for _ in range(20):
        protocol = _Answers(respond)
        udp = reactor.listenUDP(0, protocol, interface="127.0.0.1")
        port = udp.getHost().port
        if tcp_respond is not None:
            factory = Factory.forProtocol(lambda: _TCPAnswers(tcp_respond))
            try:
                tcp = reactor.listenTCP(port, factory, interface="127.0.0.1")
            except CannotListenError:  # that number is taken for TCP: another one
                udp.stopListening()
                continue
            test_case.addCleanup(tcp.stopListening)
        test_case.addCleanup(udp.stopListening)
        return protocol, port
    raise RuntimeError("no port free for both UDP and TCP")


def answer_txt(query: dns.message.Message, value: str, truncated: bool = False) -> bytes:
    response = dns.message.make_response(query)
    if truncated:
        response.flags |= dns.flags.TC
    else:
        response.answer.append(dns.rrset.from_text(query.question[0].name, 5, "IN", "TXT", '"%s"' % (value,)))
    return response.to_wire()


def refuse(query: dns.message.Message) -> bytes:
    """A fake server's REFUSED answer."""
    response = dns.message.make_response(query)
    response.set_rcode(dns.rcode.REFUSED)
    return response.to_wire()


class TransportTests(TestCase):
    """Tests for the UDP/TCP exchange and the updater's error paths, with fake servers."""

    async def test_truncated_goes_tcp(self) -> None:
        """A truncated UDP answer is asked again over TCP, whose answer is used."""
        _, port = fake_server(
            self, lambda q: answer_txt(q, "", truncated=True), tcp_respond=lambda q: answer_txt(q, "over-tcp")
        )
        provider = closed_later(self, RFC2136Records(reactor, ("127.0.0.1", port), None, zone="example.test"))
        self.assertTrue(await provider.txt_visible("_acme-challenge.example.test", "over-tcp"))

    async def test_no_answer(self) -> None:
        """A server that never answers: DNSError after the timeout, after retransmissions."""
        server, port = fake_server(self, lambda q: None)
        provider = closed_later(self, RFC2136Records(reactor, ("127.0.0.1", port), None, zone="example.test", timeout=1.5))
        error = await self.assertFailure(provider.txt_visible("_acme-challenge.example.test", "v"), DNSError)
        self.assertIn("no answer within 1.5 s", error.reason)
        self.assertEqual(server.received, 2)

    async def test_garbage(self) -> None:
        """An answer that is not a DNS message: DNSError "unusable answer"."""
        _, port = fake_server(self, lambda q: q.to_wire()[:2] + b"\x81\x80garbage")
        provider = closed_later(self, RFC2136Records(reactor, ("127.0.0.1", port), None, zone="example.test"))
        error = await self.assertFailure(provider.txt_visible("_acme-challenge.example.test", "v"), DNSError)
        self.assertIn("unusable answer", error.reason)

    async def test_refused_update(self) -> None:
        """An update answered REFUSED: DNSError naming the rcode and the likely cause."""

        _, port = fake_server(self, refuse)
        provider = closed_later(self, RFC2136Records(reactor, ("127.0.0.1", port), None, zone="example.test"))
        error = await self.assertFailure(provider.add_txt("_acme-challenge.example.test", "v", 5), DNSError)
        self.assertIn("REFUSED", error.reason)
        self.assertIn("does not allow updates", error.reason)

    async def test_soa_refused(self) -> None:
        """An SOA query the server refuses: DNSError telling to set the zone."""

        _, port = fake_server(self, refuse)
        provider = closed_later(self, RFC2136Records(reactor, ("127.0.0.1", port), None))
        error = await self.assertFailure(provider.zone_for("_acme-challenge.example.test"), DNSError)
        self.assertIn("REFUSED", error.reason)
        self.assertIn("issuance.dns01.zone", error.reason)

    def test_server_must_be_address(self) -> None:
        """DNSClient.exchange() takes an IP address, not a name."""
        self.assertRaises(ValueError, DNSClient(reactor).exchange, ("ns.example.test", 53), b"", 1)

    async def test_close_waits_for_exchanges(self) -> None:
        """
        Closing the client lets an exchange in flight finish before its
        socket closes; the client opens a new socket when used again.
        """
        server, port = fake_server(self, lambda q: None)
        client = DNSClient(reactor)
        query = dns.message.make_query("example.test", "TXT")
        d = client.exchange(("127.0.0.1", port), query.to_wire(), 5)
        closed = client.close()
        self.assertNoResult(closed)
        while server.last is None:
            await deferLater(reactor, 0.01, lambda: None)
        received, sender = server.last
        server.transport.write(answer_txt(received, "still-answered"), sender)
        answer = dns.message.from_wire(await d)
        self.assertEqual(answer.answer[0][0].strings, (b"still-answered",))
        await closed
        pending = client.exchange(("127.0.0.1", port), dns.message.make_query("example.test", "TXT").to_wire(), 0.5)
        await self.assertFailure(pending, DNSError)
        await client.close()

    def test_tsig_key_errors(self) -> None:
        """TsigKey.from_base64 refuses unknown algorithms, bad secrets and empty ones."""
        self.assertRaises(ValueError, TsigKey.from_base64, "k", "hmac-md5", "c2VjcmV0")
        self.assertRaises(ValueError, TsigKey.from_base64, "k", "hmac-sha256", "not base64!")
        self.assertRaises(ValueError, TsigKey.from_base64, "k", "hmac-sha256", "")
