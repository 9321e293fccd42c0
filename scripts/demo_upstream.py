"""
A tiny HTTP upstream for the demo: answers every request with a line that
shows it came through kongacme.

Usage: python3 scripts/demo_upstream.py [PORT]
"""

import sys

from twisted.internet import endpoints, reactor
from twisted.web import resource, server


class Hello(resource.Resource):
    isLeaf = True

    def render(self, request):
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        host = (request.getHeader(b"host") or b"?").decode("ascii", "replace")
        return ("hello from the demo upstream behind kongacme (Host: %s)\n" % host).encode()


port = int(sys.argv[1]) if len(sys.argv) > 1 else 8000
endpoints.serverFromString(reactor, "tcp:%d:interface=127.0.0.1" % port).listen(server.Site(Hello()))
reactor.run()
