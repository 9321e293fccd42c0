"""
The plain-HTTP (port 80) side: http-01 challenge answers, and for every other
request a redirect to HTTPS, a reverse proxy to the route's upstream, or 404.

``GET``/``HEAD /.well-known/acme-challenge/<token>`` answers ``200
text/plain`` with the key authorization from the token store, or ``404``
(body ``Not found\\n``, which is also what Kong's sanity probe token ``x``
expects). Other requests depend on :attr:`HTTPSettings.mode`:

``redirect`` (default)
    ``301`` for ``GET``/``HEAD`` (cacheable, what browsers expect) and
    ``308`` for every other method (which, unlike ``301``, obliges clients to
    repeat the method and body) to ``https://<Host without port>[:https_port]
    <path>?<query>``. A missing, repeated or invalid ``Host`` answers ``400``;
    it is validated (:func:`kongacme.web.hosts.parse_host_header`), never
    escaped and echoed.
``proxy``
    forwarded to ``router_getter().route_for(host)``'s upstream
    (``.host``, ``.port``, optional ``.preserve_host``); no route: ``404``.
``not_found``
    ``404``.

The daemon builds the listener with :func:`make_http_factory` and, on a
configuration reload, calls :meth:`HTTPSite.reconfigure`; see there.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Optional

import attrs
from twisted.internet.defer import maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from kongacme.interfaces import IChallengeTokenStore, IRouter
from kongacme.web._channel import LimitedRequest, LimitedSite, positive
from kongacme.web.hosts import parse_host_header
from kongacme.web.proxy import UpstreamForwarder

_log = Logger()

MODES = ("redirect", "proxy", "not_found")
CHALLENGE_PREFIX = b"/.well-known/acme-challenge/"
#: Tokens are base64url (RFC 8555 §8.3); real ones are 43 characters.
MAX_TOKEN_LENGTH = 256
_TOKEN = re.compile(rb"[A-Za-z0-9_-]{1,%d}" % (MAX_TOKEN_LENGTH,))
_UNSAFE_IN_TARGET = re.compile(rb"[^\x21-\x7e]")
NOT_FOUND_BODY = b"Not found\n"


def _port_or_none(instance: object, attribute: attrs.Attribute, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise ValueError(f"{attribute.name} must be a port number (1-65535) or None, not {value!r}")


@attrs.frozen
class HTTPSettings:
    """
    What the port-80 listener does and its limits. Immutable: replace it
    with :meth:`HTTPSite.reconfigure`.

    :ivar mode: ``"redirect"``, ``"proxy"`` or ``"not_found"`` (read per
        request).
    :ivar https_port: port put in redirects, or ``None``; 443 is left out of
        the URL (read per request).
    :ivar max_header_bytes: request line plus headers, and longest single
        line (431 beyond; read per connection).
    :ivar max_request_line_bytes: longest request line (414 beyond; read per
        connection).
    :ivar request_timeout: seconds a client has to send a whole request,
        counted from connection start or the end of the previous response;
        also how long an idle keep-alive connection stays (read per
        connection).
    :ivar max_body_bytes: largest request body for challenge, redirect and
        404 answers (413 beyond; read per request).
    :ivar max_proxy_body_bytes: largest body of a proxied request (bodies
        are buffered before forwarding; read per request).
    """

    mode: str = attrs.field(default="redirect", validator=attrs.validators.in_(MODES))
    https_port: Optional[int] = attrs.field(default=None, validator=_port_or_none)
    max_header_bytes: int = attrs.field(default=16384, validator=positive)
    max_request_line_bytes: int = attrs.field(default=8192, validator=positive)
    request_timeout: float = attrs.field(default=30.0, validator=positive)
    max_body_bytes: int = attrs.field(default=64 * 1024, validator=positive)
    max_proxy_body_bytes: int = attrs.field(default=16 * 1024 * 1024, validator=positive)


class HTTPSite(LimitedSite):
    """
    The port-80 :class:`twisted.web.server.Site`: limited channels
    (:mod:`kongacme.web._channel`) and the current :class:`HTTPSettings`.

    :ivar settings: the settings new requests and connections use.
    """

    def __init__(self, resource: Resource, settings: HTTPSettings, reactor: Any):
        super().__init__(
            resource, requestFactory=LimitedRequest, timeout=settings.request_timeout, reactor=reactor
        )
        self.settings = settings

    def reconfigure(self, **changes: Any) -> HTTPSettings:
        """
        Replace some settings, e.g. on a configuration reload::

            site.reconfigure(mode="proxy", https_port=8443)

        ``mode``, ``https_port`` and the body limits apply from the next
        request; the header limits and ``request_timeout`` from the next
        connection.

        :param changes: :class:`HTTPSettings` fields and their new values.
        :return: the new settings.
        :raises ValueError: for an invalid value (the old settings stay).
        :raises TypeError: for an unknown field.
        """
        self.settings = attrs.evolve(self.settings, **changes)
        return self.settings

    def body_limit(self, path: bytes) -> int:
        """
        The largest request body accepted for a request to ``path``.
        """
        settings = self.settings
        if settings.mode == "proxy" and not path.startswith(CHALLENGE_PREFIX):
            return settings.max_proxy_body_bytes
        return settings.max_body_bytes


class ChallengeResource(Resource):
    """
    The whole port-80 resource tree (a leaf: it dispatches on the raw path).
    See the module docstring for what it answers.

    :param token_store: provides :class:`~kongacme.interfaces.IChallengeTokenStore`.
    :param settings: zero-argument callable returning the current
        :class:`HTTPSettings`.
    :param router_getter: zero-argument callable returning the current
        :class:`~kongacme.interfaces.IRouter` (only called in proxy mode).
    :param forwarder: sends proxied requests upstream.
    """

    isLeaf = True

    def __init__(
        self,
        token_store: IChallengeTokenStore,
        settings: Callable[[], HTTPSettings],
        router_getter: Callable[[], IRouter],
        forwarder: UpstreamForwarder,
    ):
        super().__init__()
        if not IChallengeTokenStore.providedBy(token_store):
            raise TypeError(f"token_store must provide IChallengeTokenStore, not {token_store!r}")
        self._tokens = token_store
        self._settings = settings
        self._router_getter = router_getter
        self._forwarder = forwarder

    def render(self, request: Request) -> Any:
        path = request.path
        if request.method in (b"GET", b"HEAD") and path.startswith(CHALLENGE_PREFIX):
            return self._challenge(request, path[len(CHALLENGE_PREFIX) :])
        settings = self._settings()
        if settings.mode == "not_found":
            return _not_found(request)
        if not request.uri.startswith(b"/"):
            _log.info("refused request target {target!r}", target=request.uri[:100])
            return _respond(request, 400, b"Bad Request\n")
        values = request.requestHeaders.getRawHeaders(b"host") or []
        host = parse_host_header(values[0]) if len(values) == 1 else None
        if host is None:
            _log.info(
                "refused request with invalid Host {host!r} from {peer}",
                host=[value[:100] for value in values],
                peer=getattr(request.getClientAddress(), "host", None),
            )
            return _respond(request, 400, b"Bad Request\n")
        if settings.mode == "redirect":
            return _redirect(request, host.url_host, settings.https_port)
        route = self._router_getter().route_for(host.name)
        if route is None:
            _log.debug("no route for {host}", host=host.name)
            return _not_found(request)
        if getattr(route, "preserve_host", False):
            host_header = values[0]
        else:
            upstream = f"[{route.host}]" if ":" in route.host else route.host
            host_header = (upstream if route.port == 80 else f"{upstream}:{route.port}").encode("ascii")
        self._forwarder.forward(request, route.host, route.port, host_header)
        return NOT_DONE_YET

    def _challenge(self, request: Request, token: bytes) -> Any:
        if token == b"x":
            # Kong's "test_http_challenge_flow" sanity probe.
            return _not_found(request)
        if not _TOKEN.fullmatch(token):
            _log.info("refused malformed challenge token {token!r}", token=token[:100])
            return _not_found(request)
        client_gone = []
        request.notifyFinish().addErrback(client_gone.append)
        text = token.decode("ascii")

        def found(key_authorization: Optional[str]) -> None:
            if client_gone:
                return
            if key_authorization is None:
                _log.info("unknown challenge token {token}", token=text)
                body = _not_found(request)
            else:
                _log.debug("answered challenge token {token}", token=text)
                body = _respond(request, 200, key_authorization.encode("utf-8"))
            request.write(body)
            request.finish()

        def failed(failure: Failure) -> None:
            _log.failure("token store lookup failed for {token}", failure, token=text)
            if not client_gone:
                request.write(_respond(request, 500, b"Internal Server Error\n"))
                request.finish()

        maybeDeferred(self._tokens.get, text).addCallbacks(found, failed)
        return NOT_DONE_YET


def _respond(request: Request, code: int, body: bytes) -> bytes:
    """
    Set a ``text/plain`` response's code and headers.

    :return: the body to write (empty for ``HEAD``, whose
        ``Content-Length`` still says how long it would be).
    """
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    request.setHeader(b"content-length", b"%d" % (len(body),))
    return b"" if request.method == b"HEAD" else body


def _not_found(request: Request) -> bytes:
    return _respond(request, 404, NOT_FOUND_BODY)


def _redirect(request: Request, url_host: str, https_port: Optional[int]) -> bytes:
    authority = url_host if https_port in (None, 443) else f"{url_host}:{https_port}"
    # Twisted only accepts printable ASCII in the request target; quoting
    # anything else anyway keeps the Location header safe by construction.
    target = _UNSAFE_IN_TARGET.sub(lambda m: b"%%%02X" % m.group()[0], request.uri)
    request.setHeader(b"location", b"https://" + authority.encode("ascii") + target)
    if request.method in (b"GET", b"HEAD"):
        return _respond(request, 301, b"Moved Permanently\n")
    return _respond(request, 308, b"Permanent Redirect\n")


def make_http_factory(
    token_store: IChallengeTokenStore,
    mode: str,
    router_getter: Callable[[], IRouter],
    https_port: Optional[int],
    max_header_bytes: int,
    request_timeout: float,
    reactor: Any,
    *,
    max_request_line_bytes: int = 8192,
    max_body_bytes: int = 64 * 1024,
    max_proxy_body_bytes: int = 16 * 1024 * 1024,
    proxy_connect_timeout: float = 10.0,
) -> HTTPSite:
    """
    Build the port-80 site; listen with
    ``reactor.listenTCP(80, site)`` (or an endpoint). On reload call
    ``site.reconfigure(mode=..., https_port=...)``; ``router_getter`` is
    called per proxied request, so swapping the router it returns is enough.

    :param token_store: provides :class:`~kongacme.interfaces.IChallengeTokenStore`.
    :param mode: ``"redirect"``, ``"proxy"`` or ``"not_found"``.
    :param router_getter: zero-argument callable returning the current
        :class:`~kongacme.interfaces.IRouter`.
    :param https_port: port for redirect URLs, or ``None`` (443 is omitted).
    :param max_header_bytes: request line plus headers.
    :param request_timeout: seconds to receive a whole request (absolute,
        not reset by each byte) and to keep an idle connection.
    :param reactor: provides ``IReactorTCP`` and ``IReactorTime``; used for
        timeouts and upstream connections.
    :param max_request_line_bytes: longest request line.
    :param max_body_bytes: body limit except for proxied requests.
    :param max_proxy_body_bytes: body limit for proxied requests.
    :param proxy_connect_timeout: seconds to connect to an upstream.
    :raises ValueError: for an invalid setting.
    :raises TypeError: when ``token_store`` does not provide the interface.
    """
    settings = HTTPSettings(
        mode=mode,
        https_port=https_port,
        max_header_bytes=max_header_bytes,
        max_request_line_bytes=max_request_line_bytes,
        request_timeout=request_timeout,
        max_body_bytes=max_body_bytes,
        max_proxy_body_bytes=max_proxy_body_bytes,
    )
    forwarder = UpstreamForwarder(reactor, proxy_connect_timeout)
    site: HTTPSite

    def current() -> HTTPSettings:
        return site.settings

    resource = ChallengeResource(token_store, current, router_getter, forwarder)
    site = HTTPSite(resource, settings, reactor)
    return site
