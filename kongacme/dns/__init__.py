"""
DNS for dns-01 challenges (RFC 8555 §8.4): TXT records written through a
provider of :class:`kongacme.interfaces.IDNSRecords` (RFC 2136 dynamic
updates signed with TSIG, :mod:`kongacme.dns.rfc2136`), over Twisted's own
UDP and TCP transports (:mod:`kongacme.dns.transport`).
"""

from kongacme.dns.rfc2136 import RFC2136Records, TsigKey

__all__ = ["RFC2136Records", "TsigKey"]
