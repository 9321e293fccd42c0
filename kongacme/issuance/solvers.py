"""
The challenge solvers the daemon's issuer answers with, built from
``issuance.challenge_types`` (in order of preference) and
``issuance.dns01``.
"""

from __future__ import annotations

from typing import Any

from kongacme.acme.challenges import Dns01Solver, Http01Solver, TlsAlpn01Solver
from kongacme.interfaces import IChallengeTokenStore, IDNSRecords


def dns_records(dns01: Any, reactor: Any) -> IDNSRecords:
    """
    The :class:`~kongacme.interfaces.IDNSRecords` provider for an
    ``issuance.dns01`` section: RFC 2136 updates to its ``server``.
    """
    # Imported here: dnspython is loaded only when dns-01 is configured.
    from kongacme.dns.rfc2136 import RFC2136Records, TsigKey

    key = TsigKey.from_base64(dns01.tsig_key_name, dns01.tsig_algorithm, dns01.secret_text())
    return RFC2136Records(reactor, dns01.server, key, zone=dns01.zone)


def make_solvers(
    issuance: Any, token_store: IChallengeTokenStore, reactor: Any, alpn_keys: IChallengeTokenStore | None = None
) -> list[Any]:
    """
    One solver per type of ``issuance.challenge_types``, in its order.

    :param issuance: the ``issuance`` config section.
    :param token_store: where http-01 key authorizations go.
    :param reactor: for DNS transports and timers.
    :param alpn_keys: where tls-alpn-01 key authorizations go, by
        identifier (:class:`~kongacme.storage.alpn_keys.TlsAlpnKeyAuthorizations`,
        read by the TLS listener); required with tls-alpn-01.
    """
    solvers: list[Any] = []
    for typ in issuance.challenge_types:
        if typ == "http-01":
            solvers.append(Http01Solver(token_store))
        elif typ == "tls-alpn-01":
            if alpn_keys is None:
                raise ValueError("tls-alpn-01 needs a key authorization store (alpn_keys)")
            solvers.append(TlsAlpn01Solver(alpn_keys))
        elif typ == "dns-01":
            dns01 = issuance.dns01
            records = dns_records(dns01, reactor)
            solvers.append(Dns01Solver(records, reactor, dns01.propagation_timeout, dns01.ttl))
        else:
            raise ValueError("challenge type %s is not supported" % (typ,))
    return solvers
