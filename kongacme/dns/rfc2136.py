"""
TXT records for dns-01 through RFC 2136 dynamic updates signed with TSIG
(RFC 8945): BIND, Knot, PowerDNS, Windows DNS and many managed DNS
services accept them. Messages and TSIG come from ``dnspython``; they
travel over Twisted's transports (:mod:`kongacme.dns.transport`).
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, Optional

import attrs
import dns.exception
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.tsig
import dns.update
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from kongacme.dns.transport import DNSClient, describe_server
from kongacme.errors import DNSError
from kongacme.interfaces import IDNSRecords
from kongacme.net import is_ip_literal

_log = Logger()

#: TSIG algorithms accepted (RFC 8945 §6; HMAC-MD5 left out on purpose).
TSIG_ALGORITHMS = {
    "hmac-sha1": dns.tsig.HMAC_SHA1,
    "hmac-sha224": dns.tsig.HMAC_SHA224,
    "hmac-sha256": dns.tsig.HMAC_SHA256,
    "hmac-sha384": dns.tsig.HMAC_SHA384,
    "hmac-sha512": dns.tsig.HMAC_SHA512,
}

#: What a refused update's TSIG error most likely means (RFC 8945 §5.3).
_TSIG_HINTS = {
    dns.tsig.PeerBadKey: "TSIG BADKEY: the server does not know key {key}",
    dns.tsig.PeerBadSignature: "TSIG BADSIG: the secret of key {key} is not the server's",
    dns.tsig.PeerBadTime: "TSIG BADTIME: this machine's clock and the server's differ by more than the fudge",
    dns.tsig.PeerBadTruncation: "TSIG BADTRUNC",
}


@attrs.frozen
class TsigKey:
    """
    A TSIG key: its name, algorithm (a key of :data:`TSIG_ALGORITHMS`) and
    secret (raw bytes).
    """

    name: str
    algorithm: str
    secret: bytes = attrs.field(repr=False)

    @classmethod
    def from_base64(cls, name: str, algorithm: str, secret: str) -> "TsigKey":
        """
        :raises ValueError: for an unknown algorithm, a bad key name or a
            secret that is not base64.
        """
        if algorithm not in TSIG_ALGORITHMS:
            raise ValueError("must be one of " + ", ".join(sorted(TSIG_ALGORITHMS)))
        try:
            dns.name.from_text(name)
        except dns.exception.DNSException as e:
            raise ValueError("not a valid key name: %s" % (e,)) from None
        try:
            raw = base64.b64decode(secret.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("not base64") from None
        if not raw:
            raise ValueError("empty secret")
        return cls(name, algorithm, raw)

    def keyring(self) -> dict[dns.name.Name, Any]:
        """dnspython's keyring for this key."""
        name = dns.name.from_text(self.name)
        return {name: dns.tsig.Key(name, self.secret, TSIG_ALGORITHMS[self.algorithm])}


def _txt(value: str) -> dns.rdata.Rdata:
    # The value of a dns-01 record is base64url (RFC 8555 §8.4): no quote
    # or backslash to escape.
    return dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.TXT, '"%s"' % (value,))


def _absolute(name: str) -> dns.name.Name:
    return dns.name.from_text(name.rstrip(".") + ".")


@implementer(IDNSRecords)
@attrs.define
class RFC2136Records:
    """
    :class:`~kongacme.interfaces.IDNSRecords` by RFC 2136 updates to one
    primary server.

    Records are added with ``update add`` and deleted by their rdata
    (RFC 2136 §2.5.4 "Delete An RR From An RRset"), never by RRset: two
    orders validating under one name at once (a wildcard and its base
    name, or two nodes) each delete only their own value.

    :ivar _reactor: provides ``IReactorUDP``, ``IReactorTCP`` and
        ``IReactorTime`` (for names, ``resolve``).
    :ivar _server: ``(host, port)`` of the primary that accepts updates
        and is asked whether a record is visible.
    :ivar _key: the :class:`TsigKey` updates are signed with.
    :ivar _zone: the zone to update, or ``None``: found per name by an SOA
        query to ``_server`` (and remembered).
    :ivar _timeout: seconds for one exchange.
    :ivar _clock: timers (default ``_reactor``).
    """

    _reactor: Any
    _server: tuple[str, int]
    _key: Optional[TsigKey]
    _zone: Optional[str] = None
    _timeout: float = 5.0
    _clock: Optional[IReactorTime] = None
    _zones: dict[str, str] = attrs.field(factory=dict, init=False)
    _client: DNSClient = attrs.field(init=False)

    @_client.default
    def _make_client(self) -> DNSClient:
        return DNSClient(self._reactor, self._clock)

    def close(self) -> Deferred[None]:
        """Close the UDP socket(s); the provider opens them again if used."""
        return self._client.close()

    @property
    def server(self) -> str:
        """``host:port`` of the server, for messages."""
        return describe_server(self._server)

    async def _address(self) -> tuple[str, int]:
        host, port = self._server
        if is_ip_literal(host):
            return host.strip("[]"), port
        try:
            address = await self._reactor.resolve(host)
        except Exception as e:
            raise DNSError(self.server, "cannot resolve %s: %s" % (host, e)) from None
        return address, port

    async def _exchange(self, message: dns.message.Message, what: str, signed: bool) -> dns.message.Message:
        address = await self._address()
        # The id is chosen before signing: TSIG covers it (RFC 8945 §4.3).
        message.id = self._client.free_id()
        wire = await self._client.exchange(address, message.to_wire(), self._timeout)
        try:
            if signed and self._key is not None:
                # RFC 8945 §5.3: the answer is verified against our request's MAC.
                return dns.message.from_wire(wire, keyring=self._key.keyring(), request_mac=message.mac)
            return dns.message.from_wire(wire)
        except dns.tsig.PeerError as e:
            hint = next((h for t, h in _TSIG_HINTS.items() if isinstance(e, t)), "TSIG error %s" % (type(e).__name__,))
            key = self._key.name if self._key is not None else "?"
            raise DNSError(self.server, "%s refused: %s" % (what, hint.format(key=key))) from None
        except dns.exception.DNSException as e:
            raise DNSError(self.server, "%s: unusable answer (%s)" % (what, e)) from None

    def zone_for(self, name: str) -> Deferred[str]:
        """
        The zone holding ``name``: the configured one, or the owner of the
        SOA record the server gives for ``name`` (in the answer when
        ``name`` is an apex, in the authority section otherwise).

        :return: ``Deferred`` firing with the zone (no trailing dot).
        """
        return Deferred.fromCoroutine(self._zone_for(name))

    async def _zone_for(self, name: str) -> str:
        if self._zone is not None:
            return self._zone
        owner = _absolute(name)
        cached = self._zones.get(owner.to_text())
        if cached is not None:
            return cached
        query = dns.message.make_query(owner, dns.rdatatype.SOA)
        answer = await self._exchange(query, "SOA query for %s" % (name,), signed=False)
        rcode = answer.rcode()
        if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            raise DNSError(
                self.server,
                "SOA query for %s answered %s: the server is not authoritative for it "
                "(set issuance.dns01.zone, or point issuance.dns01.server at the zone's primary)"
                % (name, dns.rcode.to_text(rcode)),
            )
        for section in (answer.answer, answer.authority):
            for rrset in section:
                if rrset.rdtype == dns.rdatatype.SOA and (owner == rrset.name or owner.is_subdomain(rrset.name)):
                    zone = rrset.name.to_text().rstrip(".")
                    self._zones[owner.to_text()] = zone
                    return zone
        raise DNSError(self.server, "no SOA record for %s or above it: set issuance.dns01.zone" % (name,))

    async def _update(self, name: str, value: str, add: bool, ttl: int) -> None:
        zone = await self._zone_for(name)
        owner = _absolute(name)
        if not owner.is_subdomain(_absolute(zone)):
            raise DNSError(self.server, "%s is not in zone %s (issuance.dns01.zone)" % (name, zone))
        if self._key is not None:
            update = dns.update.UpdateMessage(
                zone + ".", keyring=self._key.keyring(), keyname=dns.name.from_text(self._key.name),
                keyalgorithm=TSIG_ALGORITHMS[self._key.algorithm],
            )
        else:
            update = dns.update.UpdateMessage(zone + ".")
        if add:
            update.add(owner, ttl, _txt(value))
        else:
            update.delete(owner, _txt(value))
        what = "%s of TXT %s in zone %s" % ("update" if add else "deletion", name, zone)
        answer = await self._exchange(update, what, signed=True)
        rcode = answer.rcode()
        if rcode != dns.rcode.NOERROR:
            hint = {
                dns.rcode.REFUSED: " (the zone does not allow updates with key %s?)" % (self._key and self._key.name,),
                dns.rcode.NOTAUTH: " (the server is not the zone's primary, or rejects the TSIG key)",
                dns.rcode.NOTZONE: " (the name is outside the zone)",
            }.get(rcode, "")
            raise DNSError(self.server, "%s refused: %s%s" % (what, dns.rcode.to_text(rcode), hint))

    def add_txt(self, name: str, value: str, ttl: int) -> Deferred[None]:
        """See :meth:`kongacme.interfaces.IDNSRecords.add_txt`."""
        return Deferred.fromCoroutine(self._update(name, value, True, ttl))

    def remove_txt(self, name: str, value: str) -> Deferred[None]:
        """See :meth:`kongacme.interfaces.IDNSRecords.remove_txt`."""
        return Deferred.fromCoroutine(self._update(name, value, False, 0))

    def txt_visible(self, name: str, value: str) -> Deferred[bool]:
        """See :meth:`kongacme.interfaces.IDNSRecords.txt_visible`."""
        return Deferred.fromCoroutine(self._visible(name, value))

    async def _visible(self, name: str, value: str) -> bool:
        owner = _absolute(name)
        query = dns.message.make_query(owner, dns.rdatatype.TXT)
        answer = await self._exchange(query, "TXT query for %s" % (name,), signed=False)
        wanted = value.encode("ascii")
        for rrset in answer.answer:
            if rrset.name == owner and rrset.rdtype == dns.rdatatype.TXT:
                if any(b"".join(rdata.strings) == wanted for rdata in rrset):
                    return True
        return False
