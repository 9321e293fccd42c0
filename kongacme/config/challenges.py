"""
kongacme's settings for the challenges it answers, beside Kong's ``acme``
object: ``issuance.challenge_types`` (in order of preference),
``issuance.dns01`` (RFC 2136 dynamic updates signed with TSIG) and
``issuance.wildcard``.
"""

from __future__ import annotations

from typing import Any

import attrs

from kongacme.config.fields import REQUIRED, Context, FilePath, Int, Invalid, ListOf, Num, OneOf, Str, Then, join
from kongacme.config.hosts import host_port, hostname_problem, normalize_hostname
from kongacme.config.records import Field, Record, valid

#: Challenge types ``issuance.challenge_types`` may name (RFC 8555 §8,
#: RFC 8737).
CHALLENGE_TYPES = ("http-01", "tls-alpn-01", "dns-01")
#: Those kongacme answers today; a name in CHALLENGE_TYPES but not here is
#: refused at load as "not supported yet".
SUPPORTED_CHALLENGE_TYPES = ("http-01", "tls-alpn-01", "dns-01")


@attrs.frozen
class Dns01Config:
    """
    Where and how dns-01 TXT records are written: RFC 2136 updates, signed
    with a TSIG key (RFC 8945), sent to the zone's primary server.

    :ivar server: ``(host, port)`` of the primary that accepts updates; it
        is also the server asked whether a record is visible.
    :ivar tsig_key_name: the TSIG key's name (BIND's ``key "name"``).
    :ivar tsig_algorithm: ``hmac-sha256`` (default), ``hmac-sha1``,
        ``hmac-sha224``, ``hmac-sha384`` or ``hmac-sha512``.
    :ivar tsig_secret: the key's secret, base64 (or ``tsig_secret_file``).
    :ivar tsig_secret_file: a file holding the base64 secret.
    :ivar zone: the zone to update; ``None``: found for each name by an
        SOA query to ``server``.
    :ivar propagation_timeout: seconds to wait for a record to be visible
        at ``server`` before telling the CA to validate (then the order
        fails).
    :ivar ttl: the TXT records' TTL, in seconds.
    """

    server: tuple[str, int]
    tsig_key_name: str
    tsig_algorithm: str = "hmac-sha256"
    tsig_secret: str | None = attrs.field(default=None, repr=False)
    tsig_secret_file: str | None = None
    zone: str | None = None
    propagation_timeout: float = 60.0
    ttl: int = 60

    def secret_text(self) -> str:
        """The base64 secret, read from ``tsig_secret_file`` if set."""
        if self.tsig_secret is not None:
            return self.tsig_secret
        assert self.tsig_secret_file is not None
        with open(self.tsig_secret_file, encoding="ascii", errors="replace") as f:
            return f.read().strip()


def _server(value: str) -> tuple[str, int]:
    text = value.strip()
    if text.startswith("[") or text.count(":") == 1:
        return host_port(text)
    # No port: the DNS port (a bare IPv6 address has several colons).
    return host_port(("[%s]:53" if ":" in text else "%s:53") % (text,))


def _zone(value: str) -> str:
    name = normalize_hostname(value)
    problem = hostname_problem(name)
    if problem is not None:
        raise Invalid(problem)
    return name


def _check_dns01(values: dict[str, Any], ctx: Context, path: str) -> None:
    secret, secret_file = values.get("tsig_secret"), values.get("tsig_secret_file")
    if secret is not None and secret_file is not None:
        ctx.problem(join(path, "tsig_secret"), "set tsig_secret or tsig_secret_file, not both")
        return
    if secret is None and secret_file is None:
        ctx.problem(join(path, "tsig_secret"), "required (or tsig_secret_file)")
        return
    if not valid(values, "tsig_key_name", "tsig_algorithm", "tsig_secret", "tsig_secret_file"):
        return
    # Imported here: dnspython is loaded only by configurations that use it.
    from kongacme.dns.rfc2136 import TsigKey

    where = join(path, "tsig_secret" if secret is not None else "tsig_secret_file")
    try:
        text = secret
        if text is None:
            assert secret_file is not None
            with open(secret_file, encoding="ascii", errors="replace") as f:
                text = f.read().strip()
        TsigKey.from_base64(values["tsig_key_name"], values["tsig_algorithm"], text)
    except OSError as e:
        ctx.problem(where, "cannot read: %s" % (e.strerror or e,))
    except ValueError as e:
        message = str(e)
        field = "tsig_key_name" if message.startswith("not a valid key name") else where.rpartition(".")[2]
        ctx.problem(join(path, field), message if field != "tsig_secret_file" else "file content: " + message)


DNS01 = Record(
    Dns01Config,
    (
        Field("server", Then(Str(), _server), REQUIRED),
        Field("tsig_key_name", Str(), REQUIRED),
        Field("tsig_algorithm", OneOf(("hmac-sha1", "hmac-sha224", "hmac-sha256", "hmac-sha384", "hmac-sha512")),
              "hmac-sha256"),
        Field("tsig_secret", Str()),
        Field("tsig_secret_file", FilePath(must_exist=True)),
        Field("zone", Then(Str(), _zone)),
        Field("propagation_timeout", Num(min=0, min_exclusive=True), 60.0),
        Field("ttl", Int(1, 86400), 60),
    ),
    checks=(_check_dns01,),
)


def _challenge_types(value: tuple[str, ...]) -> tuple[str, ...]:
    for name in value:
        if name not in SUPPORTED_CHALLENGE_TYPES:
            raise Invalid("%s is not supported yet (supported: %s)" % (name, ", ".join(SUPPORTED_CHALLENGE_TYPES)))
    if len(set(value)) != len(value):
        raise Invalid("lists a challenge type twice")
    return value


#: ``issuance.challenge_types``.
CHALLENGE_TYPES_FIELD = Field(
    "challenge_types", Then(ListOf(OneOf(CHALLENGE_TYPES), non_empty=True), _challenge_types), ("http-01",)
)


def check_challenges(values: dict[str, Any], ctx: Context, path: str) -> None:
    """
    Cross-field checks of the ``issuance`` record: ``dns01`` is required
    with dns-01 among ``challenge_types``, and ``wildcard`` needs dns-01
    (RFC 8555 §7.1.3: only dns-01 validates a wildcard).
    """
    if not valid(values, "challenge_types", "dns01", "wildcard"):
        return
    types = values["challenge_types"]
    if "dns-01" in types and values["dns01"] is None:
        ctx.problem(join(path, "dns01"), "required when issuance.challenge_types includes dns-01")
    if values["wildcard"] and "dns-01" not in types:
        ctx.problem(
            join(path, "wildcard"),
            "wildcard certificates need dns-01 in issuance.challenge_types (only dns-01 validates a wildcard)",
        )
