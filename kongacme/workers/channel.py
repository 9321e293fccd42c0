"""
The AMP commands between the master and a worker, and how certificates and
the worker's share of the configuration travel in them.

Master → worker: :class:`Configure`, :class:`SetFallback`,
:class:`CertificatesChanged`, :class:`Start`, :class:`Drain`. Worker →
master: :class:`FetchCertificates`, :class:`AskCertificate`,
:class:`ChallengeCertificate`, :class:`Counters`, :class:`StoppedAccepting`.

The master holds every certificate; a worker holds a bounded cache
(:mod:`kongacme.workers.certcache`) filled by :class:`FetchCertificates` on
first use, and told by :class:`CertificatesChanged` which names changed in
the master, with their certificates (it replaces what it held of them).

An AMP value holds at most 65,535 bytes; certificates, lists of names and
the configuration are JSON in a :class:`ChunkedJSON` argument, which spreads
one value over as many AMP keys as it needs.
"""

from __future__ import annotations

import json
from typing import Any, Iterator, Sequence

import attrs
from twisted.protocols import amp

from kongacme.tls.certs import CertifiedKey, load_certified_key

#: Bytes of one AMP value (its limit is 65,535).
CHUNK = 60_000

#: Names per :class:`FetchCertificates` or :class:`CertificatesChanged`
#: command at most (a wildcard renewed, a bulk load: many moderate messages,
#: not one huge one).
NAMES_PER_COMMAND = 256


class ChunkedJSON(amp.Argument):
    """
    A JSON value of any size: its encoding is split over the keys
    ``name``, ``name.1``, ``name.2``, … of one box, each under AMP's value
    limit.
    """

    def toBox(self, name: bytes, strings: dict, objects: dict, proto: Any) -> None:
        value = objects.pop(name.decode("ascii"))
        data = json.dumps(value, separators=(",", ":")).encode("utf-8")
        strings[name] = data[:CHUNK]
        for number, start in enumerate(range(CHUNK, len(data), CHUNK), 1):
            strings[name + b".%d" % (number,)] = data[start : start + CHUNK]

    def fromBox(self, name: bytes, strings: dict, objects: dict, proto: Any) -> None:
        parts = [strings.pop(name)]
        number = 1
        while name + b".%d" % (number,) in strings:
            parts.append(strings.pop(name + b".%d" % (number,)))
            number += 1
        objects[name.decode("ascii")] = json.loads(b"".join(parts).decode("utf-8"))


# -- master -> worker -----------------------------------------------------------


class Configure(amp.Command):
    """
    The worker's share of the configuration (:func:`worker_settings`). A
    worker that cannot apply it answers ``applied: False`` with the reason
    and keeps its previous settings.
    """

    arguments = [(b"settings", ChunkedJSON())]
    response = [(b"applied", amp.Boolean()), (b"reason", amp.Unicode(optional=True))]


class SetFallback(amp.Command):
    """The certificate for names with none and clients without SNI."""

    arguments = [(b"certificate", ChunkedJSON())]
    response: list = []


class CertificatesChanged(amp.Command):
    """
    The master's certificates under these names (exact names or ``*.``
    wildcards) were added, renewed or removed. ``certificates`` is what
    :class:`FetchCertificates` would answer for them now (the names the
    master has none for left out): the worker replaces from it what it
    holds of these names, and drops and fetches again the others it holds
    (names without a certificate now, names a changed wildcard covers).
    """

    arguments = [(b"names", ChunkedJSON()), (b"certificates", ChunkedJSON())]
    response: list = []


class Start(amp.Command):
    """
    The initial state has been sent: start accepting on the inherited
    listening sockets.
    """

    arguments: list = []
    response: list = []


class Drain(amp.Command):
    """
    Stop accepting, and answer once every connection has ended or
    ``deadline`` seconds have passed (then the worker exits).
    """

    arguments = [(b"deadline", amp.Float())]
    response = [(b"remaining", amp.Integer())]


# -- worker -> master -----------------------------------------------------------


class FetchCertificates(amp.Command):
    """
    The certificates the master serves for these server names (its cache's
    lookup: exact name, then a wildcard one label deep). The answer groups
    the names by certificate (:func:`encode_certificate` entries, each with
    the asked names it serves) and lists the names the master has none for
    (``absent``: the fallback).
    """

    arguments = [(b"names", ChunkedJSON())]
    response = [(b"certificates", ChunkedJSON()), (b"absent", ChunkedJSON())]


class AskCertificate(amp.Command):
    """
    A handshake for ``name`` found no certificate in the master either
    (:class:`FetchCertificates`): the master runs its handshake gate (one
    order per name, however many workers ask) and answers when the
    certificate exists or the wait ends; the worker then fetches it.
    """

    arguments = [(b"name", amp.Unicode())]
    response = [(b"found", amp.Boolean())]


class ChallengeCertificate(amp.Command):
    """
    A CA validating tls-alpn-01 (an ``acme-tls/1`` ClientHello) asked for
    ``name``: the master answers the pending key authorization (its memory,
    then the storage), or none; the worker builds the certificate.
    """

    arguments = [(b"name", amp.Unicode())]
    response = [(b"key_authorization", amp.Unicode(optional=True))]


class Counters(amp.Command):
    """
    The worker's counters (:func:`kongacme.workers.worker.counters`), sent
    every second.
    """

    arguments = [(b"counters", ChunkedJSON())]
    response: list = []
    requiresAnswer = False


class StoppedAccepting(amp.Command):
    """
    The worker, draining, has closed its copies of the listening sockets
    (before its connections end): the master may now close a socket a
    reload removed, which closing would have shut down under a worker still
    accepting on it.
    """

    arguments: list = []
    response: list = []
    requiresAnswer = False


# -- payloads -------------------------------------------------------------------


def encode_certificate(certified: CertifiedKey, names: Sequence[str] = ()) -> dict:
    """A JSON-able form of ``certified`` filed under ``names``."""
    return {
        "names": list(names),
        "chain": certified.chain_pem().decode("ascii"),
        "key": certified.key_pem().decode("ascii"),
        "source": certified.source,
    }


def decode_certificate(entry: dict) -> tuple[tuple[str, ...], CertifiedKey]:
    """
    ``(names, certificate)`` from :func:`encode_certificate`'s form.

    :raises CertificateError: if the PEM does not parse or match.
    """
    certified = load_certified_key(
        entry["chain"].encode("ascii"), entry["key"].encode("ascii"), source=entry.get("source", "")
    )
    return tuple(entry["names"]), certified


@attrs.frozen
class WorkerSettings:
    """
    What a worker needs of the configuration.

    :ivar routes: the ``routes`` entries, as :class:`RouteConfig` fields.
    :ivar default_route: ``default_upstream``, or ``None``.
    :ivar proxy: ``proxy`` (connect_timeout, idle_timeout).
    :ivar tls: ``tls.handshake_timeout``, ``session_tickets``,
        ``ticket_key_rotation``, ``cache_size``.
    :ivar limits: the ``limits`` section (applied per worker).
    :ivar ask_master: hold handshakes for names without a certificate and
        ask the master (on-demand issuance is on).
    :ivar gate_timeout: the longest a handshake waits for the master.
    :ivar log_level: ``logging.level``.
    :ivar drain_timeout: ``workers_drain_timeout``, for a worker sent
        ``SIGTERM`` itself while its master lives.
    :ivar engine: ``listen.engine`` (read when the worker starts accepting).
    """

    routes: tuple
    default_route: Any
    proxy: dict
    tls: dict
    limits: dict
    ask_master: bool
    gate_timeout: float
    log_level: str
    drain_timeout: float
    engine: str = "lean"


def worker_settings(config: Any) -> dict:
    """
    The JSON form of the :class:`WorkerSettings` of ``config`` (a
    :class:`kongacme.config.DaemonConfig`).
    """
    issuance = config.issuance
    on_demand = (
        config.acme is not None and issuance.on_demand and config.fleet.role != "control_plane"
    )

    def route(r: Any) -> dict | None:
        return None if r is None else attrs.asdict(r)

    return {
        "routes": [route(r) for r in config.routes],
        "default_route": route(config.default_route),
        "proxy": attrs.asdict(config.proxy),
        "tls": {
            "handshake_timeout": config.tls.handshake_timeout,
            "session_tickets": config.tls.session_tickets,
            "ticket_key_rotation": config.tls.ticket_key_rotation,
            "cache_size": config.tls.cache_size,
        },
        "limits": attrs.asdict(config.limits),
        "ask_master": on_demand,
        # The master's own wait (handshake_wait) ends first; this only
        # bounds a master that never answers.
        "gate_timeout": issuance.handshake_wait + 5.0,
        "log_level": config.logging.level,
        "drain_timeout": config.workers_drain_timeout,
        "engine": config.listen.engine,
    }


def read_settings(data: dict) -> WorkerSettings:
    """
    :func:`worker_settings`'s form back into :class:`WorkerSettings`, with
    the routes as :class:`kongacme.config.RouteConfig`.

    :raises ValueError: saying what is wrong.
    """
    from kongacme.config.daemon import LimitsConfig, RouteConfig

    def route(value: dict | None) -> RouteConfig | None:
        if value is None:
            return None
        return RouteConfig(
            hosts=tuple(value["hosts"]),
            upstream_host=value["upstream_host"],
            upstream_port=int(value["upstream_port"]),
            alpn=tuple(value["alpn"]),
            proxy_protocol=value["proxy_protocol"],
        )

    try:
        LimitsConfig(**data["limits"])
        return WorkerSettings(
            routes=tuple(route(r) for r in data["routes"]),
            default_route=route(data["default_route"]),
            proxy={"connect_timeout": float(data["proxy"]["connect_timeout"]),
                   "idle_timeout": float(data["proxy"]["idle_timeout"])},
            tls={"handshake_timeout": float(data["tls"]["handshake_timeout"]),
                 "session_tickets": bool(data["tls"]["session_tickets"]),
                 "ticket_key_rotation": float(data["tls"]["ticket_key_rotation"]),
                 "cache_size": int(data["tls"]["cache_size"])},
            limits=dict(data["limits"]),
            ask_master=bool(data["ask_master"]),
            gate_timeout=float(data["gate_timeout"]),
            log_level=str(data["log_level"]),
            drain_timeout=float(data["drain_timeout"]),
            engine=_engine(data["engine"]),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError("invalid worker settings: %s: %s" % (e.__class__.__name__, e)) from None


def _engine(value: object) -> str:
    if value not in ("twisted", "lean"):
        raise ValueError("engine must be twisted or lean, not %r" % (value,))
    return str(value)


def in_groups(names: Sequence[str], size: int = NAMES_PER_COMMAND) -> Iterator[list[str]]:
    """``names`` in lists of at most ``size``."""
    for start in range(0, len(names), size):
        yield list(names[start : start + size])
