"""
The demo's DNS stub: answers every A query with 127.0.0.1 and every other
query with an empty NOERROR, on UDP and TCP. Pebble is started with
``-dnsserver`` pointing here, so it validates http-01 for any name
(demo.test, shop.demo.test …) against kongacme on this machine.

Usage: python3 scripts/demo_dns.py [PORT]     (default 8053, on 127.0.0.1)
"""

import sys

from twisted.internet import reactor
from twisted.internet.defer import succeed
from twisted.names import common, dns, server


class LoopbackAuthority(common.ResolverBase):
    """Every name is 127.0.0.1; every other record type is empty NOERROR."""

    def _lookup(self, name, cls, type, timeout):
        if type == dns.A:
            answer = dns.RRHeader(
                name=name, type=dns.A, cls=dns.IN, ttl=60, auth=True, payload=dns.Record_A("127.0.0.1", ttl=60)
            )
            return succeed(([answer], [], []))
        return succeed(([], [], []))

    def query(self, query, timeout=None):
        # Types without a lookup method in ResolverBase (CAA, HTTPS …) too.
        return self._lookup(query.name.name, query.cls, query.type, timeout)


def main() -> None:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8053
    factory = server.DNSServerFactory(authorities=[LoopbackAuthority()])
    # Bound before the reactor runs: a busy port is an immediate, non-zero exit.
    reactor.listenUDP(port, dns.DNSDatagramProtocol(controller=factory), interface="127.0.0.1")
    reactor.listenTCP(port, factory, interface="127.0.0.1")
    print("demo DNS stub: every A query -> 127.0.0.1 on udp+tcp 127.0.0.1:%d" % port, flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
