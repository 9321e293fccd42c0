"""
A faulty CA in front of a real one: an HTTPS reverse proxy (Twisted) that
forwards ACME requests to a Pebble unchanged, Host header included (Pebble
builds its URLs, and checks each JWS ``url``, from it, so clients keep
talking to the proxy), and, on request, answers chosen endpoints itself
with 503 (an overloaded CA or load balancer) or 429 ``rateLimited``; or
stops listening (the CA is gone: connection refused) and comes back on the
same port.

In a reactor-backed test::

    proxy = FaultyCA.start(self, pebble)      # pebble: tests.pebble.PebbleFixture
    proxy.fail("503", ("directory",))          # or ("new-order",), "429"
    ... proxy.directory_url ...
    proxy.heal()

Also a program, for benchmarks: ``python -m tests.cafault PORT PEBBLE_DIR_URL
CA_PEM CERT KEY MODE ENDPOINT`` (``CA_PEM``: what Pebble's HTTPS chains to;
``CERT``/``KEY``: Pebble's listener certificate, served by the proxy too;
``MODE``: ``forward``, ``503``, ``429``; ``ENDPOINT``: ``directory`` or
``new-order``).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Optional, Sequence
from urllib.parse import urlsplit

from twisted.internet import reactor, ssl
from twisted.internet.defer import Deferred
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from kongacme.acme.trust import make_http_client

#: Pebble's paths of the endpoints a fault can hit.
ENDPOINTS = {"directory": "/dir", "new-order": "/order-plz", "new-account": "/sign-me-up"}

#: Headers not copied across (hop-by-hop, or set by the server again).
_HOP = {b"connection", b"keep-alive", b"transfer-encoding", b"content-length", b"date", b"server"}


class _Forwarder(Resource):
    isLeaf = True

    def __init__(self, upstream: str, ca_bundle: str):
        super().__init__()
        self.upstream = upstream.rstrip("/")
        self.http = make_http_client(reactor, ca_bundle)
        self.mode = "forward"
        self.paths: frozenset[str] = frozenset()
        #: ``{path: count}`` of requests answered with a fault.
        self.faults: dict[str, int] = {}
        self.forwarded = 0

    def render(self, request: Any) -> Any:
        path = request.path.decode("ascii", "replace")
        if self.mode != "forward" and path in self.paths:
            self.faults[path] = self.faults.get(path, 0) + 1
            if self.mode == "503":
                request.setResponseCode(503)
                request.setHeader(b"content-type", b"text/html")
                return b"<html><body><h1>503 Service Unavailable</h1></body></html>"
            request.setResponseCode(429)
            request.setHeader(b"content-type", b"application/problem+json")
            return json.dumps({"type": "urn:ietf:params:acme:error:rateLimited",
                               "detail": "too many new orders recently", "status": 429}).encode()
        self.forwarded += 1
        body = request.content.read()
        headers = Headers()
        for name, values in request.requestHeaders.getAllRawHeaders():
            if name.lower() not in (b"connection", b"content-length"):
                headers.setRawHeaders(name, values)
        d = self.http.request(
            request.method.decode("ascii"), self.upstream + request.uri.decode("ascii"),
            headers=headers, data=body or None, allow_redirects=False, timeout=30,
        )

        def answered(response: Any) -> Deferred:
            request.setResponseCode(response.code)
            for name, values in response.headers.getAllRawHeaders():
                if name.lower() not in _HOP:
                    request.responseHeaders.setRawHeaders(name, values)
            return response.content().addCallback(done)

        def done(content: bytes) -> None:
            if not request.finished and not getattr(request, "_disconnected", False):
                request.write(content)
                request.finish()

        def failed(failure: Any) -> None:
            if not request.finished:
                request.setResponseCode(502)
                request.write(failure.getErrorMessage().encode())
                request.finish()

        d.addCallback(answered).addErrback(failed)
        return NOT_DONE_YET


class FaultyCA:
    """
    The proxy: ``directory_url`` is the Pebble's directory through it.

    :ivar port: the TCP port it listens on (kept across :meth:`down` / :meth:`up`).
    """

    def __init__(self, upstream_directory: str, ca_pem: str, cert: str, key: str, port: int = 0):
        parts = urlsplit(upstream_directory)
        self._resource = _Forwarder("%s://%s" % (parts.scheme, parts.netloc), ca_pem)
        with open(key) as k, open(cert) as c:
            self._context = ssl.PrivateCertificate.loadPEM(k.read() + c.read()).options()
        self._site = Site(self._resource)
        self._site.noisy = False
        self._path = parts.path
        self._listener: Any = None
        self.port = port
        self.up()

    @classmethod
    def start(cls, test_case: Any, pebble: Any) -> "FaultyCA":
        """A proxy in front of ``pebble`` (a ``PebbleFixture``), stopped by ``test_case``'s cleanups."""
        work = pebble.workdir
        proxy = cls(pebble.directory_url, pebble.ca_bundle, os.path.join(work, "listener.crt"),
                    os.path.join(work, "listener.key"))
        test_case.addCleanup(proxy.down)
        return proxy

    @property
    def directory_url(self) -> str:
        """The directory, through the proxy."""
        return "https://127.0.0.1:%d%s" % (self.port, self._path)

    @property
    def faults(self) -> dict[str, int]:
        """``{path: count}`` of requests answered with a fault."""
        return self._resource.faults

    def fail(self, mode: str, endpoints: Sequence[str]) -> None:
        """Answer ``endpoints`` (``directory``, ``new-order``, ``new-account``) with ``mode`` (503, 429)."""
        assert mode in ("503", "429"), mode
        self._resource.mode = mode
        self._resource.paths = frozenset(ENDPOINTS[e] for e in endpoints)

    def heal(self) -> None:
        """Forward everything again."""
        self._resource.mode = "forward"

    def down(self) -> Deferred:
        """Stop listening and drop open connections (the CA is gone)."""
        listener, self._listener = self._listener, None
        if listener is None:
            from twisted.internet.defer import succeed

            return succeed(None)
        for channel in list(getattr(self._site, "_channels", ())):
            channel.transport.abortConnection()
        return listener.stopListening()

    def up(self) -> None:
        """Listen (again, on the same port)."""
        self._listener = reactor.listenSSL(self.port, _Tracking(self._site), self._context, interface="127.0.0.1")
        self.port = self._listener.getHost().port


class _Tracking:
    """A factory wrapper that remembers its protocols so :meth:`FaultyCA.down` can cut them."""

    def __init__(self, site: Site):
        self._site = site
        site._channels = set()  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._site, name)

    def buildProtocol(self, addr: Any) -> Any:
        protocol = self._site.buildProtocol(addr)
        channels = self._site._channels  # type: ignore[attr-defined]
        channels.add(protocol)
        original = protocol.connectionLost

        def lost(reason: Any) -> None:
            channels.discard(protocol)
            original(reason)

        protocol.connectionLost = lost
        return protocol


def main(argv: Optional[list[str]] = None) -> None:
    """Run a proxy until killed (benchmarks): PORT PEBBLE_DIR_URL CA_PEM CERT KEY MODE ENDPOINT."""
    port, upstream, ca_pem, cert, key, mode, endpoint = (argv or sys.argv[1:])[:7]
    proxy = FaultyCA(upstream, ca_pem, cert, key, int(port))
    if mode != "forward":
        proxy.fail(mode, (endpoint,))
    print("listening on", proxy.port, flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
