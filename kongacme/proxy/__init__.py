"""
The forwarding half of the proxy: routes (server name → upstream), the
PROXY protocol headers sent upstream, and the byte relay between a
TLS-terminated client and its upstream TCP server.
"""

from kongacme.proxy.forward import ProxyFactory, ProxyServerProtocol
from kongacme.proxy.proxyproto import v1_header, v2_header
from kongacme.proxy.routes import Route, RouteTable, all_alpn

__all__ = [
    "ProxyFactory",
    "ProxyServerProtocol",
    "Route",
    "RouteTable",
    "all_alpn",
    "v1_header",
    "v2_header",
]
