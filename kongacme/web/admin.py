"""
A minimal Admin API listener: ``GET /health`` and ``GET /status``, JSON in
and out, optional bearer-token authentication.

Routes live in a dispatch table keyed on ``(method, path)``; the full Kong
Admin API (``/acme``, ``/acme/certificates``) will be added there. Meant for
a loopback or otherwise private address.
"""

from __future__ import annotations

import hmac
import json
from typing import Any, Callable, Mapping, Optional

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from kongacme.web._channel import QuietSite

_log = Logger()

#: A handler gets the request and answers ``(status code, JSON-able body)``,
#: or a Deferred firing with that pair.
Handler = Callable[[Request], "tuple[int, Any] | Deferred"]


class AdminResource(Resource):
    """
    The Admin API's whole resource tree (a leaf that looks the request up in
    its dispatch table).

    :param routes: ``{(method, path): handler}``, e.g.
        ``{(b"GET", b"/health"): handler}``; ``HEAD`` uses the ``GET``
        handler. Anything not in the table answers 404.
    :param token: when set, every request must carry
        ``Authorization: Bearer <token>`` (else 401).
    """

    isLeaf = True

    def __init__(self, routes: Mapping[tuple[bytes, bytes], Handler], token: Optional[str] = None):
        super().__init__()
        self._routes = dict(routes)
        self._token = None if token is None else token.encode("utf-8")

    def add_route(self, method: bytes, path: bytes, handler: Handler) -> None:
        """Answer ``method path`` with ``handler`` (replacing any previous one)."""
        self._routes[(method, path)] = handler

    def set_token(self, token: Optional[str]) -> None:
        """Require ``token`` from now on (``None``: no authentication); used on reload."""
        self._token = None if token is None else token.encode("utf-8")

    def render(self, request: Request) -> bytes:
        if self._token is not None and not self._authorized(request):
            request.setHeader(b"www-authenticate", b'Bearer realm="kongacme"')
            return _json(request, 401, {"message": "Unauthorized"})
        method = b"GET" if request.method == b"HEAD" else request.method
        handler = self._routes.get((method, request.path))
        if handler is None:
            return _json(request, 404, {"message": "Not found"})
        try:
            result = handler(request)
            if not isinstance(result, Deferred):
                return _json(request, *result)
        except Exception:
            return self._crashed(request)
        finished = request.notifyFinish()
        finished.addErrback(lambda f: None)  # the client went away; answer is dropped

        def answer(pair: tuple[int, Any]) -> None:
            if finished.called:
                return
            try:
                data = _json(request, *pair)
            except Exception:
                data = self._crashed(request)
            request.write(data)
            request.finish()

        def crashed(f: Any) -> None:
            _log.failure("admin handler failed for {path}", f, path=_printable(request.path))
            answer((500, {"message": "An unexpected error occurred"}))

        result.addCallbacks(answer, crashed)
        return NOT_DONE_YET

    def _crashed(self, request: Request) -> bytes:
        _log.failure(
            "admin handler failed for {method} {path}",
            method=request.method.decode("ascii", "replace"),
            path=_printable(request.path),
        )
        return _json(request, 500, {"message": "An unexpected error occurred"})

    def _authorized(self, request: Request) -> bool:
        assert self._token is not None
        values = request.requestHeaders.getRawHeaders(b"authorization") or []
        if len(values) != 1:
            return False
        scheme, _, credentials = values[0].partition(b" ")
        # compare_digest runs in time independent of where the values
        # differ (only their lengths leak).
        match = hmac.compare_digest(credentials.strip(), self._token)
        return scheme.lower() == b"bearer" and match


def _printable(path: bytes) -> str:
    return path[:200].decode("ascii", "backslashreplace")


def _json(request: Request, code: int, body: Any) -> bytes:
    data = json.dumps(body, separators=(",", ":")).encode("utf-8")
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"content-length", b"%d" % (len(data),))
    return b"" if request.method == b"HEAD" else data


def make_admin_factory(
    status_provider: Callable[[], Mapping[str, Any]],
    token: Optional[str] = None,
    *,
    reactor: Optional[IReactorTime] = None,
) -> QuietSite:
    """
    Build the Admin API site; listen with ``reactor.listenTCP(port, site,
    interface="127.0.0.1")`` or an endpoint.

    :param status_provider: zero-argument callable returning a
        JSON-serialisable dict, served by ``GET /status``.
    :param token: bearer token required on every request, or ``None`` for
        no authentication.
    :param reactor: ``IReactorTime`` for connection timeouts; pass the
        daemon's reactor (``None`` lets Twisted use the global one).
    :return: the site.
    :raises TypeError: when ``token`` is not a string or is empty.
    """
    if token is not None and (not isinstance(token, str) or not token):
        raise TypeError("token must be a non-empty str or None")

    def health(request: Request) -> tuple[int, Any]:
        return 200, {"status": "ok"}

    def status(request: Request) -> tuple[int, Any]:
        return 200, status_provider()

    routes: dict[tuple[bytes, bytes], Handler] = {
        (b"GET", b"/health"): health,
        (b"GET", b"/status"): status,
    }
    return QuietSite(AdminResource(routes, token), reactor=reactor)
