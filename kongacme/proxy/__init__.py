"""
The forwarding half of the proxy: routes (server name → upstream), PROXY
protocol headers, and the byte relay between a TLS-terminated client and its
upstream TCP server.
"""

from kongacme.proxy.forward import ProxyFactory, ProxyServerProtocol
from kongacme.proxy.proxyproto import ParsedHeader, parse_header, v1_header, v2_header
from kongacme.proxy.routes import Route, RouteTable, all_alpn

__all__ = [
    "ParsedHeader",
    "ProxyFactory",
    "ProxyServerProtocol",
    "Route",
    "RouteTable",
    "all_alpn",
    "parse_header",
    "v1_header",
    "v2_header",
]
