"""
The Admin API listener: ``GET /health`` and ``GET /status`` here, the Kong
routes (``/acme``, ``/acme/certificates``) and the rest installed by their
modules; JSON in and out, optional bearer-token authentication.

Routes live in two dispatch tables: exact ``(method, path)`` pairs
(:meth:`AdminResource.add_route`) and ``(method, template)`` pairs whose
``{name}`` segments match one non-empty path segment each
(:meth:`AdminResource.add_pattern_route`). What every route gets for free:

- 401 without the bearer token (when one is configured), answered from the
  request head before any body is read, and the connection closed;
- 413 for a body over :data:`MAX_BODY` bytes: a larger ``Content-Length``
  at once from the head, a chunked body when it grows past the limit;
- the port-80 listener's head size limits and request deadline
  (:mod:`kongacme.web._channel`, :class:`AdminSettings`): a client
  trickling its request is cut off after ``request_timeout``;
- 404 for an unknown path, 405 with ``Allow`` for a known path asked with
  another method;
- 415 for a non-empty body that is not JSON, a form or multipart;
- :class:`RequestError` raised by a handler (or failing its Deferred)
  becomes that status with ``{"message": ...}``; anything else is a logged
  500.

Meant for a loopback or otherwise private address; the configuration
refuses a non-loopback one without a token (``admin.token``,
``admin.allow_unauthenticated``).
"""

from __future__ import annotations

import hmac
import json
import re
from typing import Any, Callable, Collection, Mapping, Optional
from urllib.parse import parse_qsl

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from kongacme.web._channel import LimitedSite, Refusal, positive
from kongacme.web.responses import Raw

_log = Logger()

#: A handler gets the request and answers ``(status code, JSON-able body)``,
#: a :class:`~kongacme.web.responses.Raw`, or a Deferred firing with either.
#: Pattern routes' handlers also get the matched segments as keyword
#: arguments (raw bytes, still percent-encoded).
Handler = Callable[..., "tuple[int, Any] | Raw | Deferred"]

#: Largest request body accepted (bytes); larger ones answer 413.
MAX_BODY = 64 * 1024
#: Body media types the Admin API reads (Kong accepts the same three).
JSON_TYPE = b"application/json"
FORM_TYPE = b"application/x-www-form-urlencoded"
MULTIPART_TYPE = b"multipart/form-data"
BODY_TYPES = frozenset({JSON_TYPE, FORM_TYPE, MULTIPART_TYPE})
#: The 401 answer's body and ``WWW-Authenticate`` header.
UNAUTHORIZED = {"message": "Unauthorized"}
CHALLENGE = b'Bearer realm="kongacme"'
_PARAM = re.compile(rb"\{([a-z_]+)\}")


class RequestError(Exception):
    """
    A request the Admin API refuses; raised by handlers (or failing their
    Deferred), answered as ``code`` with ``{"message": message}``.

    :ivar code: the HTTP status (4xx).
    :ivar message: what is wrong, for the client.
    """

    def __init__(self, code: int, message: str):
        self.code = code
        self.message = message
        super().__init__(code, message)


class AdminResource(Resource):
    """
    The Admin API's whole resource tree (a leaf that looks the request up in
    its dispatch table).

    :param routes: ``{(method, path): handler}``, e.g.
        ``{(b"GET", b"/health"): handler}``; ``HEAD`` uses the ``GET``
        handler. A path in no table answers 404; a path known with other
        methods answers 405.
    :param token: when set, every request must carry
        ``Authorization: Bearer <token>`` (else 401).
    """

    isLeaf = True

    def __init__(self, routes: Mapping[tuple[bytes, bytes], Handler], token: Optional[str] = None):
        super().__init__()
        self._routes = dict(routes)
        self._patterns: dict[tuple[bytes, bytes], tuple[tuple[bytes, ...], Handler]] = {}
        self._token = None if token is None else token.encode("utf-8")

    def add_route(self, method: bytes, path: bytes, handler: Handler) -> None:
        """Answer ``method path`` with ``handler`` (replacing any previous one)."""
        self._routes[(method, path)] = handler

    def add_pattern_route(self, method: bytes, template: bytes, handler: Handler) -> None:
        """
        Answer ``method`` on paths matching ``template`` with ``handler``,
        e.g. ``add_pattern_route(b"GET", b"/acme/certificates/{host}", h)``
        calls ``h(request, host=b"example.com")``. A ``{name}`` segment
        matches exactly one non-empty path segment (no ``/``); exact routes
        win over patterns.

        :raises ValueError: if ``template`` does not start with ``/``.
        """
        if not template.startswith(b"/"):
            raise ValueError("template must start with /")
        self._patterns[(method, template)] = (tuple(template.split(b"/")), handler)

    def _match(self, path: bytes) -> dict[bytes, tuple[Handler, dict[str, bytes]]]:
        """Every route for ``path``: ``{method: (handler, arguments)}``."""
        found: dict[bytes, tuple[Handler, dict[str, bytes]]] = {}
        segments = path.split(b"/")
        for (method, template), (parts, handler) in self._patterns.items():
            arguments = _match_segments(parts, segments)
            if arguments is not None:
                found.setdefault(method, (handler, arguments))
        for (method, exact), handler in self._routes.items():
            if exact == path:
                found[method] = (handler, {})
        return found

    def set_token(self, token: Optional[str]) -> None:
        """Require ``token`` from now on (``None``: no authentication); used on reload."""
        self._token = None if token is None else token.encode("utf-8")

    def render(self, request: Request) -> bytes:
        if not self.authorized(request):
            request.setHeader(b"www-authenticate", CHALLENGE)
            return _json(request, 401, UNAUTHORIZED)
        method = b"GET" if request.method == b"HEAD" else request.method
        routes = self._match(request.path)
        if not routes:
            return _json(request, 404, {"message": "Not found"})
        if method not in routes:
            allowed = set(routes) | ({b"HEAD"} if b"GET" in routes else set())
            request.setHeader(b"allow", b", ".join(sorted(allowed)))
            return _json(request, 405, {"message": "Method not allowed"})
        refused = _check_body(request)
        if refused is not None:
            return _json(request, refused.code, {"message": refused.message})
        handler, arguments = routes[method]
        try:
            result = handler(request, **arguments)
            if not isinstance(result, Deferred):
                return _answer(request, result)
        except RequestError as e:
            return _json(request, e.code, {"message": e.message})
        except Exception:
            return self._crashed(request)
        finished = request.notifyFinish()
        finished.addErrback(lambda f: None)  # the client went away; answer is dropped

        def answer(pair: tuple[int, Any]) -> None:
            if finished.called:
                return
            try:
                data = _answer(request, pair)
            except Exception:
                data = self._crashed(request)
            request.write(data)
            request.finish()

        def crashed(f: Any) -> None:
            if f.check(RequestError):
                answer((f.value.code, {"message": f.value.message}))
                return
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

    def authorized(self, request: Request) -> bool:
        """
        Whether ``request`` may be served: no token is configured, or it
        carries ``Authorization: Bearer <token>`` (once). Reads only the
        headers, so the channel asks it before any body is read.
        """
        if self._token is None:
            return True
        values = request.requestHeaders.getRawHeaders(b"authorization") or []
        if len(values) != 1:
            return False
        scheme, _, credentials = values[0].partition(b" ")
        # compare_digest runs in time independent of where the values
        # differ (only their lengths leak).
        match = hmac.compare_digest(credentials.strip(), self._token)
        return scheme.lower() == b"bearer" and match


def shown(text: str) -> str:
    """
    ``text`` (e.g. a host name from a request) made safe to quote in a
    message: its first 100 characters, control and non-ASCII characters
    escaped.
    """
    return text[:100].encode("unicode_escape").decode("ascii")


def _printable(path: bytes) -> str:
    return path[:200].decode("ascii", "backslashreplace")


def _match_segments(parts: tuple[bytes, ...], segments: list[bytes]) -> dict[str, bytes] | None:
    if len(parts) != len(segments):
        return None
    arguments: dict[str, bytes] = {}
    for part, segment in zip(parts, segments):
        name = _PARAM.fullmatch(part)
        if name is not None:
            if not segment:
                return None
            arguments[name.group(1).decode("ascii")] = segment
        elif part != segment:
            return None
    return arguments


def _media_type(request: Request) -> bytes:
    return (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()


def _body_size(request: Request) -> int:
    content = request.content
    if content is None:
        return 0
    position = content.tell()
    content.seek(0, 2)
    size = content.tell()
    content.seek(position)
    return size


def _check_body(request: Request) -> RequestError | None:
    """
    415 for a body of a type we do not read (its size was checked by the
    channel as it arrived).
    """
    size = _body_size(request)
    if size and _media_type(request) not in BODY_TYPES:
        return RequestError(
            415, "unsupported content type: send application/json, application/x-www-form-urlencoded "
            "or multipart/form-data"
        )
    return None


def read_arguments(request: Request, allowed: Collection[str]) -> dict[str, Any]:
    """
    A request's arguments: query string parameters (last value wins,
    undeclared ones ignored), then the body's fields (a JSON object, a form,
    or on ``POST`` a multipart form; these override the query).

    JSON values keep their JSON type; form and query values are strings.

    :param allowed: the field names a body may carry.
    :raises RequestError: 400 for invalid JSON, a JSON body that is not an
        object, a body field not in ``allowed`` (named in the message) or
        text that is not UTF-8.
    """
    query = request.uri.partition(b"?")[2]
    args: dict[str, Any] = {}
    for name, value in _pairs(query):
        if name in allowed:
            args[name] = value
    media_type = _media_type(request)
    raw = b""
    if request.content is not None:
        request.content.seek(0)
        raw = request.content.read(MAX_BODY + 1)
        request.content.seek(0)
    body: dict[str, Any] = {}
    if media_type == JSON_TYPE and raw.strip():
        try:
            parsed = json.loads(raw)
        except ValueError:
            raise RequestError(400, "request body is not valid JSON") from None
        if not isinstance(parsed, dict):
            raise RequestError(400, "request body must be a JSON object")
        body = parsed
    elif media_type == FORM_TYPE:
        body = dict(_pairs(raw))
    elif media_type == MULTIPART_TYPE:
        if request.method != b"POST":
            raise RequestError(415, "multipart/form-data is read on POST only: send JSON or a form")
        # Twisted parsed it (on POST only) into request.args, with the query.
        in_query = {name for name, _ in _pairs(query)}
        for name, values in (request.args or {}).items():
            text = _text(name)
            if values and text not in in_query:
                body[text] = _text(values[-1])
    for name in body:
        if name not in allowed:
            raise RequestError(400, "unknown field in request body: %s" % (_clip(name),))
    args.update(body)
    return args


def _pairs(encoded: bytes) -> list[tuple[str, str]]:
    try:
        return parse_qsl(encoded.decode("utf-8"), keep_blank_values=True, encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        raise RequestError(400, "query and form values must be UTF-8") from None
    except ValueError:
        raise RequestError(400, "malformed query string or form body") from None


def _text(value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise RequestError(400, "query and form values must be UTF-8") from None


def _clip(name: str) -> str:
    return json.dumps(name[:100])


def truthy(value: Any) -> bool:
    """
    A flag's value: JSON ``true`` or a non-zero number, or a string other
    than ``0``, ``false``, ``no``, ``off`` (case-insensitive; an empty
    value, ``?invalid_only``, is true). Kong's Lua takes any value given as
    true, ``invalid_only=0`` included; kongacme reads the obvious "no"
    spellings as false.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return value != 0
    if isinstance(value, str):
        return value.strip().lower() not in ("0", "false", "no", "off")
    return False


def _answer(request: Request, result: Any) -> bytes:
    """A handler's result: a :class:`Raw` as it is, else ``(code, JSON-able body)``."""
    if isinstance(result, Raw):
        return result.render(request)
    return _json(request, *result)


def _encode(body: Any) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode("utf-8")


def _json(request: Request, code: int, body: Any) -> bytes:
    data = _encode(body)
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"content-length", b"%d" % (len(data),))
    return b"" if request.method == b"HEAD" else data


@attrs.frozen
class AdminSettings:
    """
    The Admin listener's limits, as the port-80 listener's
    (:class:`kongacme.web.challenge.HTTPSettings`). Immutable: replace them
    with :meth:`AdminSite.reconfigure`; they apply from the next
    connection.

    :ivar max_header_bytes: request line plus headers, and longest single
        line (431 beyond).
    :ivar max_request_line_bytes: longest request line (414 beyond).
    :ivar request_timeout: seconds a client has to send a whole request
        (head and body), counted from connection start or the end of the
        previous response; also how long an idle keep-alive connection
        stays (408, closed).
    """

    max_header_bytes: int = attrs.field(default=8192, validator=positive)
    max_request_line_bytes: int = attrs.field(default=8192, validator=positive)
    request_timeout: float = attrs.field(default=30.0, validator=positive)


class AdminSite(LimitedSite):
    """
    The Admin API's :class:`twisted.web.server.Site`: limited channels that
    check the token and the declared body size from the request head, and
    answer every refusal in Kong's ``{"message": ...}`` shape.

    :ivar settings: the :class:`AdminSettings` new connections use.
    """

    resource: AdminResource

    def __init__(self, resource: AdminResource, settings: AdminSettings, reactor: Optional[IReactorTime]):
        super().__init__(resource, timeout=settings.request_timeout, reactor=reactor)
        self.settings = settings

    def reconfigure(self, **changes: Any) -> AdminSettings:
        """
        Replace some :class:`AdminSettings` fields, e.g. on a configuration
        reload; they apply from the next connection.

        :return: the new settings.
        :raises ValueError: for an invalid value (the old settings stay).
        :raises TypeError: for an unknown field.
        """
        self.settings = attrs.evolve(self.settings, **changes)
        return self.settings

    def check_head(self, request: Request, method: bytes, path: bytes) -> Optional[Refusal]:
        """401 before any body is read when the token is missing or wrong."""
        if self.resource.authorized(request):
            return None
        return Refusal(401, "no valid Admin API token", _JSON_HEADERS + ((b"www-authenticate", CHALLENGE),),
                       _encode(UNAUTHORIZED))

    def body_limit(self, path: bytes) -> int:
        """:data:`MAX_BODY` for every route."""
        return MAX_BODY

    def refusal(self, code: int, why: str) -> Refusal:
        """A refused request's answer: ``{"message": why}``."""
        return Refusal(code, why, _JSON_HEADERS, _encode({"message": why}))


_JSON_HEADERS = ((b"content-type", b"application/json"),)


def make_admin_factory(
    status_provider: Callable[[], Mapping[str, Any]],
    token: Optional[str] = None,
    *,
    reactor: Optional[IReactorTime] = None,
    request_timeout: float = 30.0,
    max_header_bytes: int = 8192,
) -> AdminSite:
    """
    Build the Admin API site; listen with ``reactor.listenTCP(port, site,
    interface="127.0.0.1")`` or an endpoint. On reload call
    ``site.resource.set_token(...)`` and ``site.reconfigure(...)``.

    :param status_provider: zero-argument callable returning a
        JSON-serialisable dict, served by ``GET /status``.
    :param token: bearer token required on every request, or ``None`` for
        no authentication.
    :param reactor: ``IReactorTime`` for connection timeouts; pass the
        daemon's reactor (``None`` lets Twisted use the global one).
    :param request_timeout: seconds to receive a whole request (absolute,
        not reset by each byte) and to keep an idle connection.
    :param max_header_bytes: request line plus headers.
    :return: the site.
    :raises TypeError: when ``token`` is not a string or is empty.
    :raises ValueError: for a limit that is not a positive number.
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
    settings = AdminSettings(max_header_bytes=max_header_bytes, request_timeout=request_timeout)
    return AdminSite(AdminResource(routes, token), settings, reactor)

