"""
The daemon's own sections: listeners, TLS, static certificates, routes,
proxying, the plain-HTTP listener, the Admin API, logging and connection
limits, the number of worker processes; and :class:`DaemonConfig`, the
whole file.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.endpoints import serverFromString

from kongacme.config.acme import ACME, AcmeConfig
from kongacme.config.challenges import CHALLENGE_TYPES_FIELD, DNS01, Dns01Config, check_challenges
from kongacme.config.fallback import FALLBACK_ISSUER, FallbackIssuerConfig, check_fallback_issuers
from kongacme.config.fields import (
    REQUIRED,
    Bool,
    Context,
    FilePath,
    Int,
    Invalid,
    Kind,
    ListOf,
    Num,
    OneOf,
    Str,
    Then,
    index,
    join,
)
from kongacme.config.records import (
    EMPTY,
    Default,
    Field,
    Record,
    valid,
)
from kongacme.config.hosts import host_pattern, host_port, listener_exposure


@attrs.frozen
class ListenConfig:
    """
    Twisted server endpoint descriptions for each listener; an empty tuple
    disables that listener.

    :ivar tls: TLS connections (kongacme terminates TLS, so no ``ssl:``).
    :ivar http: plain HTTP (ACME http-01 challenges, redirects).
    :ivar admin: the Admin API (``ssl:`` allowed).
    :ivar engine: what serves the TLS listener's plain ``tcp:`` endpoints:
        ``lean`` (the default: the common case on kongacme's own epoll,
        :mod:`kongacme.engine`; the rest handed to the Twisted path) or
        ``twisted`` (every connection through Twisted's transports).

    ``tls`` and ``http`` endpoints may carry Twisted's ``haproxy:`` prefix
    (``haproxy:tcp:443``): every connection then starts with a PROXY
    protocol header (v1 or v2) from a load balancer in front, and the
    client address it declares is the one logged, sent upstream and put
    in ``X-Forwarded-For``.
    """

    tls: tuple[str, ...] = ("tcp:8443:interface=127.0.0.1",)
    http: tuple[str, ...] = ("tcp:8080:interface=127.0.0.1",)
    admin: tuple[str, ...] = ("tcp:8001:interface=127.0.0.1",)
    engine: str = "lean"


@attrs.frozen
class TLSConfig:
    """
    TLS termination.

    :ivar fallback_cert: absolute path of the PEM certificate served when no
        other matches (``None``: a self-signed one is made).
    :ivar fallback_key: absolute path of its PEM private key.
    :ivar handshake_timeout: seconds allowed for a TLS handshake.
    :ivar session_tickets: whether to issue TLS session tickets.
    :ivar ticket_key_rotation: seconds between session ticket key rotations.
    :ivar cache_size: with ``workers`` > 1, the most server names each
        worker keeps certificates (and their OpenSSL contexts) for; others
        are fetched from the master, which holds every certificate.
    """

    fallback_cert: str | None = None
    fallback_key: str | None = None
    handshake_timeout: float = 10.0
    session_tickets: bool = True
    ticket_key_rotation: float = 43200.0
    cache_size: int = 10_000


@attrs.frozen
class StaticCertificate:
    """
    A certificate from files, served as is (never renewed).

    :ivar cert: absolute path of the PEM certificate chain.
    :ivar key: absolute path of the PEM private key.
    :ivar hosts: host patterns to serve it for; ``None``: the names in the
        certificate.
    """

    cert: str
    key: str
    hosts: tuple[str, ...] | None = None


@attrs.frozen
class RouteConfig:
    """
    Where TLS connections for some server names go.

    :ivar hosts: lower-cased host names or ``*.`` wildcards (empty for the
        default route).
    :ivar alpn: protocols offered in ALPN, in order (empty: no ALPN).
    :ivar proxy_protocol: ``"v1"`` or ``"v2"`` to send a PROXY protocol
        header to the upstream, ``None`` for none.
    """

    hosts: tuple[str, ...]
    upstream_host: str
    upstream_port: int
    alpn: tuple[str, ...] = ("http/1.1",)
    proxy_protocol: str | None = None


@attrs.frozen
class ProxyConfig:
    """
    Upstream connections, in seconds.
    """

    connect_timeout: float = 5.0
    idle_timeout: float = 300.0


@attrs.frozen
class HTTPConfig:
    """
    The plain-HTTP listener (ACME challenges are always answered first).

    :ivar mode: other requests are ``"redirect"``-ed to HTTPS, ``"proxy"``-ed
        to the route's upstream, or answered 404 (``"not_found"``).
    :ivar https_port: port written in redirects; ``None``: omitted (443).
    :ivar max_header_bytes: largest request head accepted.
    :ivar request_timeout: seconds to receive a request head.
    """

    mode: str = "redirect"
    https_port: int | None = None
    max_header_bytes: int = 8192
    request_timeout: float = 10.0


@attrs.frozen
class AdminConfig:
    """
    The Admin API.

    :ivar token: bearer token required on requests, ``None`` for none.
    :ivar allow_unauthenticated: serve without a token on a non-loopback
        address (refused otherwise).
    :ivar max_header_bytes: largest request head accepted (431 beyond).
    :ivar request_timeout: seconds to receive a whole request, head and
        body (408 and closed beyond), and to keep an idle connection.
    :ivar metrics_host_limit: ``/metrics`` has per-host series while the
        managed certificates are at most this many (0: never); beyond it,
        the counts by state only (a scrape of 100,000 hosts was 300,000
        lines and held the reactor for seconds).
    """

    token: str | None = None
    allow_unauthenticated: bool = False
    max_header_bytes: int = 8192
    request_timeout: float = 30.0
    metrics_host_limit: int = 10_000


@attrs.frozen
class LoggingConfig:
    """
    :ivar level: ``debug``, ``info``, ``warn`` or ``error``.
    :ivar format: ``text`` or ``json`` (one object per line).
    :ivar file: ``"-"`` for standard output, else an absolute path.
    """

    level: str = "info"
    format: str = "text"
    file: str = "-"


@attrs.frozen
class IssuanceConfig:
    """
    kongacme's own issuance settings, beside Kong's ``acme`` object (which
    stays exactly Kong's schema).

    :ivar on_demand: start an order when a TLS client asks for an admitted
        name that has no certificate yet.
    :ivar first_handshake: ``"wait"``: hold that first handshake until the
        certificate exists (at most ``handshake_wait`` seconds), so the
        first visitor gets a valid certificate; ``"fallback"``: serve the
        fallback certificate at once and issue in the background (Kong's
        behaviour).
    :ivar handshake_wait: the longest a handshake is held, in seconds.
    :ivar orders_per_minute: new orders started per minute, at most;
        names beyond it get the fallback certificate (an SNI flood under
        ``allow_any_domain`` cannot exhaust the CA's rate limits).
    :ivar max_orders_in_flight: orders running at once, at most.
    :ivar ca_bundle: PEM file of CAs trusted for the ACME server's HTTPS
        (private CAs, Pebble); ``None``: the system's trust store.
    :ivar request_timeout: seconds for one request to the CA.
    :ivar zerossl_eab_url: where ZeroSSL EAB credentials are fetched.
    :ivar challenge_port: the port the CA validates http-01 on (80 for
        every public CA); the Admin API's sanity check fetches it.
    :ivar challenge_types: the challenge types answered, in order of
        preference (for each authorization, the first the CA offers).
    :ivar dns01: how dns-01 records are written
        (:class:`~kongacme.config.challenges.Dns01Config`), or ``None``.
    :ivar wildcard: serve the names one label below a ``*.`` entry of
        ``acme.domains`` with one wildcard certificate (needs dns-01).
    :ivar fallback_issuers: CAs tried in order when the primary fails an
        order through its own fault
        (:class:`~kongacme.config.fallback.FallbackIssuerConfig`).
    """

    on_demand: bool = True
    first_handshake: str = "wait"
    handshake_wait: float = 10.0
    orders_per_minute: int = 30
    max_orders_in_flight: int = 10
    ca_bundle: str | None = None
    request_timeout: float = 30.0
    zerossl_eab_url: str = "https://api.zerossl.com/acme/eab-credentials-email"
    challenge_port: int = 80
    challenge_types: tuple[str, ...] = ("http-01",)
    dns01: Dns01Config | None = None
    wildcard: bool = False
    fallback_issuers: tuple[FallbackIssuerConfig, ...] = ()


@attrs.frozen
class FleetConfig:
    """
    Sharing certificates with other nodes through external storage.

    :ivar poll_interval: seconds between polls for certificates another
        node just issued or renewed.
    :ivar full_sync_interval: seconds between full reads of every stored
        certificate (catches certificates Kong nodes wrote).
    :ivar role: Kong's deployment roles: ``traditional`` (one node does
        everything), ``control_plane`` (issues on Admin API requests and
        renews; starts no orders from TLS handshakes, may serve no
        traffic), ``data_plane`` (serves traffic and challenge tokens from
        the shared storage and, as in Kong, may start orders itself).
        Both hybrid roles need a storage shared between nodes.
    """

    poll_interval: float = 1.0
    full_sync_interval: float = 300.0
    role: str = "traditional"


@attrs.frozen
class RenewalConfig:
    """
    The renewal service (kongacme's own; Kong's ``renew_threshold_days``
    stays in ``acme``).

    :ivar check_interval: seconds between passes over every managed
        certificate (Kong: 24 h, first one 24 h after start).
    :ivar first_check: seconds after start for the first pass.
    :ivar reuse_key: renew with the certificate's existing private key, as
        Kong does; ``False``: a new key per renewal.
    :ivar ari: follow the CA's ACME Renewal Information (RFC 9773) when
        its directory offers ``renewalInfo``.
    :ivar backoff_initial: seconds before the first retry of a failed
        renewal; doubled after each failure (with jitter).
    :ivar backoff_max: the longest pause between retries, in seconds; it
        shrinks as expiry nears so a failing renewal is tried often.
    :ivar critical_days: a failing renewal with fewer days left than this
        is logged at critical level.
    :ivar max_parallel: renewals running at once in a pass (each costs
        ~30 ms of CPU; few at a time keeps serving fast while many are due,
        see bench/RESULTS.md).
    """

    check_interval: float = 600.0
    first_check: float = 5.0
    reuse_key: bool = True
    ari: bool = True
    backoff_initial: float = 60.0
    backoff_max: float = 21600.0
    critical_days: float = 7.0
    max_parallel: int = 2


@attrs.frozen
class StorageEncryptionConfig:
    """
    Optional encryption at rest of private keys kept in external storage
    (off by default: Kong nodes cannot read encrypted keys).

    :ivar key_file: a file holding the key.
    :ivar key_env: the name of an environment variable holding the key.
    """

    key_file: str | None = None
    key_env: str | None = None

    @property
    def enabled(self) -> bool:
        return self.key_file is not None or self.key_env is not None


@attrs.frozen
class LimitsConfig:
    """
    Connection limits (HAProxy's ``maxconn``): a listener at its limit
    stops accepting, and new connections wait in the kernel's backlog.
    ``None`` derives the value from the open-file limit
    (:func:`kongacme.connlimit.derive_budget` gives the formula).

    :ivar max_connections: client connections on all listeners together.
    :ivar reserve_fds: file descriptors kept for storage, the CA, logs and
        the like, out of the connections' budget.
    :ivar tls: connections on the TLS listener(s).
    :ivar http: connections on the plain-HTTP listener(s).
    :ivar admin: connections on the Admin listener(s): a small cap, so the
        Admin API can never take the descriptors TLS needs.
    :ivar raise_nofile: raise the soft open-file limit to the hard limit at
        start.
    """

    max_connections: int | None = None
    reserve_fds: int | None = None
    tls: int | None = None
    http: int | None = None
    admin: int = 64
    raise_nofile: bool = True


@attrs.frozen
class DaemonConfig:
    """
    A whole configuration file.

    :ivar state_dir: absolute directory for persistent state (relative
        values are resolved by :func:`kongacme.config.load_config`).
    :ivar default_route: where connections matching no route go (YAML key
        ``default_upstream``), ``None``: they are closed.
    :ivar acme: the Kong ACME plugin config, ``None``: no issuance.
    :ivar workers: processes serving the TLS listener (``1``: the daemon
        is one process; more: a master and that many workers, see
        :mod:`kongacme.workers`); ``auto`` in the file is resolved to the
        CPUs this process may run on.
    :ivar workers_drain_timeout: seconds the workers get, on stop, to
        finish the connections in flight before they exit.
    :ivar warnings: things accepted but worth telling the operator
        (deprecated or unsupported Kong fields), each starting with the
        field path.
    """

    listen: ListenConfig = attrs.Factory(ListenConfig)
    state_dir: str = "./state"
    tls: TLSConfig = attrs.Factory(TLSConfig)
    certificates: tuple[StaticCertificate, ...] = ()
    routes: tuple[RouteConfig, ...] = ()
    default_route: RouteConfig | None = None
    proxy: ProxyConfig = attrs.Factory(ProxyConfig)
    http: HTTPConfig = attrs.Factory(HTTPConfig)
    admin: AdminConfig = attrs.Factory(AdminConfig)
    logging: LoggingConfig = attrs.Factory(LoggingConfig)
    acme: AcmeConfig | None = None
    issuance: IssuanceConfig = attrs.Factory(IssuanceConfig)
    fleet: FleetConfig = attrs.Factory(FleetConfig)
    renewal: RenewalConfig = attrs.Factory(RenewalConfig)
    storage_encryption: StorageEncryptionConfig = attrs.Factory(StorageEncryptionConfig)
    limits: LimitsConfig = attrs.Factory(LimitsConfig)
    workers: int = 1
    workers_drain_timeout: float = 10.0
    warnings: tuple[str, ...] = ()


_PLAIN_ENDPOINTS = ("tcp", "tcp6", "unix", "systemd")


def _advice(allowed: tuple[str, ...]) -> str:
    return "use " + ", ".join(f"{kind}:" for kind in allowed[:-1]) + f" or {allowed[-1]}:"


def parse_endpoint_description(description: str) -> tuple[list[str], dict[str, str]]:
    """
    Split a Twisted endpoint description (``tcp:443:interface=\\:\\:1``)
    into positional and keyword arguments, as ``serverFromString`` reads
    it: parts separated by ``:``, ``key=value`` parts are keywords (a value
    may hold ``=``), a backslash escapes the next character. Twisted's own
    splitter is private.

    :raises ValueError: on a trailing backslash.
    """
    args: list[str] = []
    kwargs: dict[str, str] = {}
    part: list[str] = []
    current = ""
    after_equals = False
    chars = iter(description)
    for char in chars:
        if char == ":" or (char == "=" and not after_equals):
            part.append(current)
            current = ""
            if char == ":":
                if len(part) == 1:
                    args.append(part[0])
                else:
                    kwargs[part[0]] = part[1]
                part = []
                after_equals = False
            else:
                after_equals = True
        elif char == "\\":
            try:
                current += next(chars)
            except StopIteration:
                raise ValueError("a backslash ends the description") from None
        else:
            current += char
    part.append(current)
    if len(part) == 1:
        args.append(part[0])
    else:
        kwargs[part[0]] = part[1]
    return args, kwargs


def _endpoint(allowed: tuple[str, ...], proxied: bool = False) -> Callable[[str], str]:
    def check(description: str) -> str:
        try:
            args, kwargs = parse_endpoint_description(description)
        except Exception as e:
            raise Invalid(f"not a valid endpoint description ({e})") from None
        kind = str(args[0]).lower() if args else ""
        if proxied and kind == "haproxy":
            # A load balancer in front sends a PROXY header (v1 or v2) first:
            # Twisted's haproxy: prefix wraps the endpoint after it, which is
            # checked like any other.
            wrapped = description.partition(":")[2]
            if not wrapped.strip():
                raise Invalid("haproxy: needs the endpoint it wraps, e.g. haproxy:tcp:443")
            _endpoint(allowed)(wrapped)
            return description
        if kind == "ssl" and kind not in allowed:
            raise Invalid(f"ssl: endpoints are not allowed here (kongacme terminates TLS itself); {_advice(allowed)}")
        if kind not in allowed:
            raise Invalid(f"unknown or unsupported endpoint type {kind + ':'!r}; {_advice(allowed)}")
        if kind == "systemd":
            # Parsing adopts the inherited socket, which only exists under
            # systemd: check the shape only.
            if "domain" not in kwargs or not ("index" in kwargs) ^ ("name" in kwargs):
                raise Invalid("systemd: endpoints need domain= and one of index= or name=")
            if "index" in kwargs and not str(kwargs["index"]).isdigit():
                raise Invalid("systemd: index must be a number")
            return description
        if kind == "unix" and not (args[1] if len(args) > 1 else kwargs.get("address")):
            raise Invalid("unix: endpoints need a socket path")
        if kind in ("tcp", "tcp6", "ssl"):
            port = args[1] if len(args) > 1 else kwargs.get("port", "")
            if not str(port).isdigit() or int(port) > 65535:
                raise Invalid(f"{kind}: port must be a number between 0 and 65535")
        try:
            # Builds the endpoint without listening (no reactor needed).
            serverFromString(None, description)
        except Exception as e:
            raise Invalid(f"invalid {kind}: endpoint ({e})") from None
        return description

    return check


def _listen_field(name: str, allowed: tuple[str, ...], proxied: bool = False) -> Field:
    default = getattr(attrs.fields(ListenConfig), name).default
    return Field(name, ListOf(Then(Str(), _endpoint(allowed, proxied)), single_ok=True), default)


LISTEN = Record(
    ListenConfig,
    (
        _listen_field("tls", _PLAIN_ENDPOINTS, proxied=True),
        _listen_field("http", _PLAIN_ENDPOINTS, proxied=True),
        _listen_field("admin", _PLAIN_ENDPOINTS + ("ssl",)),
        Field("engine", OneOf(("lean", "twisted")), "lean"),
    ),
)


def _check_tls(values: dict[str, Any], ctx: Context, path: str) -> None:
    # An invalid (INVALID) file still counts as given.
    for given, missing in (("fallback_cert", "fallback_key"), ("fallback_key", "fallback_cert")):
        if values[given] is not None and values[missing] is None:
            ctx.problem(join(path, missing), f"required when {given} is set")


TLS = Record(
    TLSConfig,
    (
        Field("fallback_cert", FilePath(must_exist=True)),
        Field("fallback_key", FilePath(must_exist=True)),
        Field("handshake_timeout", Num(min=0, min_exclusive=True), 10.0),
        Field("session_tickets", Bool(), True),
        Field("ticket_key_rotation", Num(min=60), 43200.0),
        Field("cache_size", Int(1, 100_000_000), 10_000),
    ),
    checks=(_check_tls,),
)


def _unique(values: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(values))


_HOSTS = Then(ListOf(Then(Str(), host_pattern), single_ok=True, non_empty=True), _unique)

CERTIFICATE = Record(
    StaticCertificate,
    (
        Field("cert", FilePath(must_exist=True), REQUIRED),
        Field("key", FilePath(must_exist=True), REQUIRED),
        Field("hosts", _HOSTS),
    ),
)

_ROUTE_OPTIONS = (
    Field("upstream", Then(Str(), host_port), REQUIRED, attr=("upstream_host", "upstream_port")),
    Field("alpn", Then(ListOf(OneOf(("h2", "http/1.1")), single_ok=True), _unique), ("http/1.1",)),
    Field("proxy_protocol", OneOf(("v1", "v2"))),
)

ROUTE = Record(RouteConfig, (Field("hosts", _HOSTS, REQUIRED),) + _ROUTE_OPTIONS)
DEFAULT_ROUTE = Record(RouteConfig, _ROUTE_OPTIONS, constants={"hosts": ()})


@attrs.frozen
class _DefaultUpstream(Kind):
    """
    ``default_upstream``: ``"host:port"`` or a route mapping without hosts.
    """

    def parse(self, value: object, ctx: Context, path: str) -> Any:
        if isinstance(value, str):
            try:
                host, port = host_port(value)
            except Invalid as e:
                return ctx.problem(path, str(e))
            return RouteConfig((), host, port)
        if isinstance(value, dict):
            return DEFAULT_ROUTE.parse(value, ctx, path)
        return ctx.problem(path, "must be host:port or a mapping with upstream, alpn and proxy_protocol")


PROXY = Record(
    ProxyConfig,
    (
        Field("connect_timeout", Num(min=0, min_exclusive=True), 5.0),
        Field("idle_timeout", Num(min=0, min_exclusive=True), 300.0),
    ),
)

HTTP = Record(
    HTTPConfig,
    (
        Field("mode", OneOf(("redirect", "proxy", "not_found")), "redirect"),
        Field("https_port", Int(1, 65535)),
        Field("max_header_bytes", Int(1024, 1048576), 8192),
        Field("request_timeout", Num(min=0, min_exclusive=True), 10.0),
    ),
)

ADMIN = Record(
    AdminConfig,
    (
        Field("token", Str()),
        Field("allow_unauthenticated", Bool(), False),
        Field("max_header_bytes", Int(1024, 1048576), 8192),
        Field("request_timeout", Num(min=0, min_exclusive=True), 30.0),
        Field("metrics_host_limit", Int(0, 100_000_000), 10_000),
    ),
)


def _check_admin_exposure(values: dict[str, Any], ctx: Context, path: str) -> None:
    # An Admin API anyone can reach without a token lets anyone order
    # certificates and read the status: refused unless asked for.
    if not valid(values, "listen", "admin"):
        return
    admin = values["admin"]
    if admin.token is not None or admin.allow_unauthenticated:
        return
    for i, description in enumerate(values["listen"].admin):
        where = listener_exposure(description)
        if where is not None:
            ctx.problem(
                join(path, "admin.token"),
                f"required: {index('listen.admin', i)} ({description}) {where}; set admin.token, listen on "
                "127.0.0.1 or a unix: socket, or set admin.allow_unauthenticated: true to serve it without one",
            )
            return

LOGGING = Record(
    LoggingConfig,
    (
        Field("level", OneOf(("debug", "info", "warn", "error")), "info"),
        Field("format", OneOf(("text", "json")), "text"),
        Field("file", FilePath(allow_dash=True), "-"),
    ),
)


ISSUANCE = Record(
    IssuanceConfig,
    (
        Field("on_demand", Bool(), True),
        Field("first_handshake", OneOf(("wait", "fallback")), "wait"),
        Field("handshake_wait", Num(min=0, min_exclusive=True), 10.0),
        Field("orders_per_minute", Int(1, 100000), 30),
        Field("max_orders_in_flight", Int(1, 10000), 10),
        Field("ca_bundle", FilePath(must_exist=True)),
        Field("request_timeout", Num(min=0, min_exclusive=True), 30.0),
        Field("zerossl_eab_url", Str(), "https://api.zerossl.com/acme/eab-credentials-email"),
        Field("challenge_port", Int(1, 65535), 80),
        CHALLENGE_TYPES_FIELD,
        Field("dns01", DNS01),
        Field("wildcard", Bool(), False),
        Field("fallback_issuers", ListOf(FALLBACK_ISSUER), ()),
    ),
    checks=(check_challenges,),
)


FLEET = Record(
    FleetConfig,
    (
        Field("poll_interval", Num(min=0.05), 1.0),
        Field("full_sync_interval", Num(min=1), 300.0),
        Field("role", OneOf(("traditional", "control_plane", "data_plane")), "traditional"),
    ),
)


RENEWAL = Record(
    RenewalConfig,
    (
        Field("check_interval", Num(min=1), 600.0),
        Field("first_check", Num(min=0), 5.0),
        Field("reuse_key", Bool(), True),
        Field("ari", Bool(), True),
        Field("backoff_initial", Num(min=1), 60.0),
        Field("backoff_max", Num(min=1), 21600.0),
        Field("critical_days", Num(min=0), 7.0),
        Field("max_parallel", Int(1, 1000), 2),
    ),
)


STORAGE_ENCRYPTION = Record(
    StorageEncryptionConfig,
    (
        Field("key_file", FilePath(must_exist=True)),
        Field("key_env", Str()),
    ),
)


_CONNECTIONS = Int(1, 10_000_000)

LIMITS = Record(
    LimitsConfig,
    (
        Field("max_connections", _CONNECTIONS),
        Field("reserve_fds", Int(0, 10_000_000)),
        Field("tls", _CONNECTIONS),
        Field("http", _CONNECTIONS),
        Field("admin", _CONNECTIONS, 64),
        Field("raise_nofile", Bool(), True),
    ),
)


#: The most worker processes ``workers`` accepts.
MAX_WORKERS = 256


def available_cpus() -> int:
    """The CPUs this process may run on (``workers: auto``)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@attrs.frozen
class _Workers(Kind):
    """``workers``: ``auto`` or an integer from 1 to :data:`MAX_WORKERS`."""

    def parse(self, value: object, ctx: Context, path: str) -> Any:
        if value == "auto":
            return max(1, min(MAX_WORKERS, available_cpus()))
        if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_WORKERS:
            return value
        return ctx.problem(path, f"must be auto or an integer between 1 and {MAX_WORKERS}")


def _check_role(values: dict[str, Any], ctx: Context, path: str) -> None:
    if not valid(values, "fleet", "acme"):
        return
    role, acme = values["fleet"].role, values["acme"]
    if role != "traditional" and acme is not None and acme.storage in ("shm", "kong"):
        # Kong forbids shm in hybrid mode; kongacme's "kong" storage is
        # files on one host, not shared between nodes either.
        ctx.problem(
            join(path, "acme.storage"),
            f"fleet.role {role} needs storage shared between nodes (redis, vault or consul), not {acme.storage}",
        )


def _check_storage_encryption(values: dict[str, Any], ctx: Context, path: str) -> None:
    if not valid(values, "storage_encryption") or not values["storage_encryption"].enabled:
        return
    # Imported here: kongacme.storage imports this package.
    from kongacme.storage.encryption import EncryptionKeyError, load_key

    try:
        load_key(values["storage_encryption"])
    except EncryptionKeyError as e:
        ctx.problem(join(path, e.field), e.reason)


def _check_routes(values: dict[str, Any], ctx: Context, path: str) -> None:
    if not valid(values, "routes"):
        return
    owner: dict[str, int] = {}
    for i, route in enumerate(values["routes"]):
        for j, host in enumerate(route.hosts):
            if host in owner:
                ctx.problem(
                    join(index(join(path, "routes"), i), index("hosts", j)),
                    f"{host} is already routed by {index('routes', owner[host])}",
                )
            else:
                owner[host] = i


DAEMON = Record(
    DaemonConfig,
    (
        Field("listen", LISTEN, EMPTY),
        Field("state_dir", FilePath(), Default("./state")),
        Field("tls", TLS, EMPTY),
        Field("certificates", ListOf(CERTIFICATE), ()),
        Field("routes", ListOf(ROUTE), ()),
        Field("default_upstream", _DefaultUpstream(), None, attr="default_route"),
        Field("proxy", PROXY, EMPTY),
        Field("http", HTTP, EMPTY),
        Field("admin", ADMIN, EMPTY),
        Field("logging", LOGGING, EMPTY),
        Field("acme", ACME),
        Field("issuance", ISSUANCE, EMPTY),
        Field("fleet", FLEET, EMPTY),
        Field("renewal", RENEWAL, EMPTY),
        Field("storage_encryption", STORAGE_ENCRYPTION, EMPTY),
        Field("limits", LIMITS, EMPTY),
        Field("workers", _Workers(), 1),
        Field("workers_drain_timeout", Num(min=0), 10.0),
    ),
    checks=(_check_routes, _check_role, _check_storage_encryption, _check_admin_exposure, check_fallback_issuers),
)
