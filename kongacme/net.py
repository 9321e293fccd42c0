"""
Small network helpers the proxy, the storage clients and the certificate
code share: telling an IP literal from a host name, choosing the client
endpoint for a host, and the TLS connection creator for a server (verified,
or not verified but still sending SNI).
"""

from __future__ import annotations

import functools
import ipaddress
from typing import Any

from OpenSSL import SSL
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IStreamClientEndpoint
from twisted.internet.ssl import CertificateOptions, optionsForClientTLS
from zope.interface import implementer


@functools.lru_cache(maxsize=1024)
def is_ip_literal(host: str) -> bool:
    """
    Whether ``host`` is an IPv4 or IPv6 address rather than a name.

    IPv6 may be written in brackets (``[::1]``) and carry a zone
    (``fe80::1%eth0``). Memoised: the proxy asks once per connection.
    """
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def canonical_ip(host: str) -> str:
    """
    An IP address in its canonical text form (RFC 5952 for IPv6:
    ``2001:db8::7``, not ``2001:db8:0:0:0:0:0:7`` as Twisted's PROXY v2
    parser writes it); anything else unchanged.
    """
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host


def peer_name(transport: Any) -> str:
    """
    ``host:port`` of a transport's peer for log lines (``[host]:port`` for
    IPv6, in canonical form), or ``"?"`` when it has none. Behind a
    ``haproxy:`` listener this is the client the PROXY header declared.
    """
    try:
        peer = transport.getPeer()
        host, port = canonical_ip(peer.host), peer.port
    except Exception:
        return "?"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def client_endpoint(reactor: Any, host: str, port: int, timeout: float) -> IStreamClientEndpoint:
    """
    A TCP client endpoint for ``host``: IP literals (brackets allowed)
    connect directly, skipping name resolution and its thread pool; names go
    through ``HostnameEndpoint`` (happy eyeballs over every address).

    :param timeout: seconds to wait for the connection.
    """
    host = host.strip("[]")
    if not is_ip_literal(host):
        return HostnameEndpoint(reactor, host, port, timeout=timeout)
    endpoint = TCP4ClientEndpoint if ipaddress.ip_address(host).version == 4 else TCP6ClientEndpoint
    return endpoint(reactor, host, port, timeout=timeout)


@implementer(IOpenSSLClientConnectionCreator)
class UnverifiedTLS:
    """
    Client TLS that checks neither the server's chain nor its name (Kong's
    ``ssl_verify: false`` / ``tls_verify: false``) but still sends SNI.

    :param server_name: the name sent as SNI; ``None`` or an IP address
        sends none (SNI cannot carry an address, RFC 6066 §3).
    """

    def __init__(self, server_name: str | None):
        self._context = CertificateOptions(verify=False).getContext()
        self._sni = None if server_name is None or is_ip_literal(server_name) else server_name.encode("idna")

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        """A new client ``SSL.Connection`` for ``tlsProtocol``."""
        connection = SSL.Connection(self._context, None)
        connection.set_app_data(tlsProtocol)
        if self._sni is not None:
            connection.set_tlsext_host_name(self._sni)
        return connection


def client_tls(server_name: str, verify: bool, trust_root: Any = None) -> IOpenSSLClientConnectionCreator:
    """
    How to start TLS to a server.

    :param server_name: the name sent as SNI and, with ``verify``, checked
        against the certificate (an IP address is checked, not sent).
    :param verify: check the chain and the name; ``False``:
        :class:`UnverifiedTLS`.
    :param trust_root: an ``IOpenSSLTrustRoot`` for ``verify``; ``None`` is
        the system's trust store (which honours ``SSL_CERT_FILE``).
    """
    if not verify:
        return UnverifiedTLS(server_name)
    return optionsForClientTLS(server_name, trustRoot=trust_root)
