"""
Kong's certificate endpoints of the Admin API (KONG-ACME-REFERENCE §2) and
kongacme's additions:

- ``PATCH /acme``: a renewal pass in the background (202);
- ``GET /acme/certificates[?invalid_only=1]`` and
  ``GET /acme/certificates/{host}``: what storage holds, in Kong's format,
  plus each host's ``renewal`` state (kongacme);
- ``DELETE /acme/certificates/{host}[?revoke=1]`` (kongacme): forget a
  certificate (storage, cache, renewal), optionally revoking it first;
- ``POST /acme/certificates/{host}/renew`` (kongacme): renew one host now.

Without an ``acme`` section every one of them answers 404
``{"message": "ACME is not configured: …"}``, as ``POST /acme`` does (Kong
answers 404 when the plugin is not configured).
"""

from __future__ import annotations

import datetime
from typing import Any, Callable

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.server import Request

from kongacme.config.hosts import LENIENT_LABEL, is_hostname, normalize_hostname
from kongacme.errors import AcmeError
from kongacme.issuance.stored import decode_stored, read_all
from kongacme.storage import keys
from kongacme.tls.certs import CertifiedKey, issuer_cn
from kongacme.web.admin import RequestError, read_arguments, shown, truthy
from kongacme.web.admin_acme import NOT_CONFIGURED, issuance_failure

log = Logger()

#: Kong's time format for ``not_before`` / ``not_after`` (UTC here; Kong
#: uses the server's local time).
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
#: What a ``DELETE /acme/certificates/{host}`` body may carry.
DELETE_FIELDS = frozenset({"revoke"})
#: Longest host name (RFC 1035: 253 octets written out).
MAX_HOST = 253


def parse_host(raw: bytes) -> str:
    """
    The host in a request path, checked strictly: ASCII letters, digits,
    ``-``, ``_`` and dots making a name of at most 253 characters (a
    leftmost ``*`` label allowed), normalised as everywhere
    (:func:`~kongacme.config.hosts.normalize_hostname`: lower-cased, one
    trailing dot dropped). Percent-encoding, control
    characters, non-ASCII, ports and empty labels are refused rather than
    decoded: no stored host needs them.

    :raises RequestError: 400 naming what is wrong.
    """
    if len(raw) > MAX_HOST + raw.endswith(b"."):
        raise RequestError(400, "invalid host: longer than %d characters" % (MAX_HOST,))
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise RequestError(400, "invalid host: not ASCII") from None
    if "%" in text:
        raise RequestError(400, "invalid host: percent-encoding is not accepted")
    if ":" in text:
        raise RequestError(400, "port is not allowed in host")
    host = normalize_hostname(text)
    if not is_hostname(host[2:] if host.startswith("*.") else host, LENIENT_LABEL):
        raise RequestError(400, "invalid host: %s" % (shown(text),))
    return host


def _timestamp(moment: datetime.datetime) -> float:
    return moment.timestamp()


def serial_hex(serial: int) -> str:
    """A serial number as OpenSSL prints it, upper-case colon hex: ``03:A1:…``."""
    digits = "%X" % (serial,)
    if len(digits) % 2:
        digits = "0" + digits
    return ":".join(digits[i : i + 2] for i in range(0, len(digits), 2))


def pubkey_type(certified: CertifiedKey) -> str:
    """OpenSSL's short name of the key type: ``rsaEncryption`` or ``id-ecPublicKey``."""
    key = certified.leaf.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        return "rsaEncryption"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return "id-ecPublicKey"
    return type(key).__name__


def describe(
    host: str, certified: CertifiedKey, now: float, renewal: Any = None, issued_by: Any = None
) -> dict[str, Any]:
    """
    One entry of ``GET /acme/certificates``: Kong's eight fields and
    kongacme's ``renewal`` and ``acme_issuer``.

    :param host: the host the certificate is stored under (Kong reads the
        subject CN, which is the same for certificates Kong or kongacme
        ordered).
    :param now: epoch seconds, for ``valid``.
    :param renewal: the host's :class:`~kongacme.renewal.state.RenewalState`
        or ``None``.
    :param issued_by: the :class:`~kongacme.issuance.issuers.IssuedBy` of
        the certificate (``{"directory", "fallback"}``), ``None`` when not
        recorded (ordered before kongacme recorded it, by Kong, …).
    """
    not_before = certified.not_before
    not_after = certified.not_after
    return {
        "digest": certified.fingerprint,
        "host": host,
        "issuer_cn": issuer_cn(certified.leaf),
        "not_before": not_before.strftime(TIME_FORMAT),
        "not_after": not_after.strftime(TIME_FORMAT),
        "valid": _timestamp(not_before) < now < _timestamp(not_after),
        "serial_number": serial_hex(certified.leaf.serial_number),
        "pubkey_type": pubkey_type(certified),
        "renewal": renewal.to_json(now) if renewal is not None else None,
        "acme_issuer": issued_by.to_dict() if issued_by is not None else None,
    }


class CertificatesAdmin:
    """
    Handlers for ``PATCH /acme`` and ``/acme/certificates``.

    Each collaborator is asked for afresh on every request (a reload
    replaces them; ``None`` means no ``acme`` section).

    :param get_renewal: the :class:`~kongacme.renewal.service.RenewalService`.
    :param get_storage: the ``IStorage`` with Kong's keys.
    :param get_cache: the ``CertificateCache``.
    :param get_static_names: names served by static certificates (never
        removed from the cache here).
    :param get_issuer: the issuer, for revocation (``revoke(certified,
        reason)``).
    :param clock: ``IReactorTime``, "now" for ``valid``.
    """

    def __init__(
        self,
        get_renewal: Callable[[], Any],
        get_storage: Callable[[], Any],
        get_cache: Callable[[], Any],
        get_static_names: Callable[[], Any],
        get_issuer: Callable[[], Any],
        clock: IReactorTime,
    ):
        self._get_renewal = get_renewal
        self._get_storage = get_storage
        self._get_cache = get_cache
        self._get_static_names = get_static_names
        self._get_issuer = get_issuer
        self._clock = clock

    def _issued_by(self, storage: Any, host: str, certified: CertifiedKey) -> Deferred:
        """The CA that issued ``certified`` as the issuer chain recorded it, or ``None``."""
        ledger = getattr(self._get_issuer(), "ledger", None)
        if ledger is None:
            return succeed(None)
        return ledger.lookup(storage, host, certified)

    # -- PATCH /acme ----------------------------------------------------------

    def patch(self, request: Request) -> tuple[int, Any]:
        """``PATCH /acme``: start a renewal pass; its outcome is logged."""
        read_arguments(request, ())
        renewal = self._get_renewal()
        if renewal is None:
            return 404, {"message": NOT_CONFIGURED}

        def done(summary: Any) -> None:
            summary = summary if isinstance(summary, dict) else {}
            log.info(
                "renewal pass from the Admin API: {checked} checked, {renewed} renewed, {failed} failed",
                checked=summary.get("checked"),
                renewed=len(summary.get("renewed") or ()),
                failed=len(summary.get("failed") or ()),
                summary=summary,
            )

        maybeDeferred(renewal.renew_all).addCallbacks(
            done, lambda f: log.failure("renewal pass from the Admin API failed", f)
        )
        return 202, {"message": "Renewal process started successfully"}

    # -- GET /acme/certificates -------------------------------------------------

    @inlineCallbacks
    def list_all(self, request: Request):
        """``GET /acme/certificates[?invalid_only=1]``."""
        args = read_arguments(request, ("invalid_only",))
        invalid_only = "invalid_only" in args and truthy(args["invalid_only"])
        storage = self._get_storage()
        if storage is None:
            return 404, {"message": NOT_CONFIGURED}
        renewal = self._get_renewal()
        now = self._clock.seconds()
        try:
            stored = yield read_all(storage)
        except Exception as e:
            return self._storage_failed(e)
        # One look at the renewal states, not one per host.
        states = {} if renewal is None else {state.host: state for state in renewal.states()}
        pairs = sorted(stored, key=lambda pair: pair[0])
        issuers = yield gatherResults([self._issued_by(storage, host, certified) for host, certified in pairs])
        data = []
        for (host, certified), issued_by in zip(pairs, issuers):
            entry = describe(host, certified, now, states.get(host), issued_by)
            if not invalid_only or not entry["valid"]:
                data.append(entry)
        return 200, {"data": data}

    @inlineCallbacks
    def get(self, request: Request, host: bytes):
        """``GET /acme/certificates/{host}``."""
        name = parse_host(host)
        read_arguments(request, ())
        storage = self._get_storage()
        if storage is None:
            return 404, {"message": NOT_CONFIGURED}
        try:
            raw = yield storage.get(keys.cert_key(name))
        except Exception as e:
            return self._storage_failed(e)
        certified = None if raw is None else decode_stored(raw, keys.cert_key(name))
        if certified is None:
            return _absent(name, raw is not None)
        issued_by = yield self._issued_by(storage, name, certified)
        now = self._clock.seconds()
        return 200, {"data": describe(name, certified, now, _state(self._get_renewal(), name), issued_by)}

    # -- DELETE /acme/certificates/{host} ---------------------------------------

    @inlineCallbacks
    def delete(self, request: Request, host: bytes):
        """
        ``DELETE /acme/certificates/{host}[?revoke=1]``: revoke at the CA
        first when asked (nothing is deleted if that fails), then remove the
        certificate and renewal keys from storage, the host from the cache
        (unless a static certificate serves it) and from the renewal
        service. Admission is unchanged: with on-demand issuance the next
        handshake for the host orders a new certificate.
        """
        name = parse_host(host)
        args = read_arguments(request, DELETE_FIELDS)
        revoke = "revoke" in args and truthy(args["revoke"])
        storage = self._get_storage()
        if storage is None:
            return 404, {"message": NOT_CONFIGURED}
        key = keys.cert_key(name)
        try:
            raw = yield storage.get(key)
        except Exception as e:
            return self._storage_failed(e)
        if raw is None:
            return _absent(name, False)
        if revoke:
            certified = decode_stored(raw, key)
            if certified is None:
                return 409, {"message": "cannot revoke the certificate for host %s: the stored value is unreadable "
                             "(delete without revoke to remove it)" % (name,)}
            issuer = self._get_issuer()
            if issuer is None or not hasattr(issuer, "revoke"):
                return 404, {"message": NOT_CONFIGURED}
            try:
                yield maybeDeferred(issuer.revoke, certified, 0)
            except AcmeError as e:
                log.warn("revoking the certificate for {host} failed: {error}", host=name, error=str(e))
                body: dict[str, Any] = {"message": "failed to revoke the certificate for host %s: %s" % (name, e)}
                if hasattr(e, "to_dict"):
                    body["problem"] = e.to_dict()
                return 502, body
        try:
            yield storage.delete(key)
            yield storage.delete(keys.renew_config(name))
        except Exception as e:
            return self._storage_failed(e)
        cache = self._get_cache()
        static = self._get_static_names() or ()
        if cache is not None and name not in static and cache.get(name) is not None:
            cache.remove(name)
        renewal = self._get_renewal()
        if renewal is not None:
            renewal.forget(name)
        log.info("certificate for {host} deleted from the Admin API (revoked: {revoked})", host=name, revoked=revoke)
        done = "revoked and deleted" if revoke else "deleted"
        return 200, {"message": "certificate for host %s is %s" % (name, done)}

    # -- POST /acme/certificates/{host}/renew -----------------------------------

    def renew(self, request: Request, host: bytes) -> tuple[int, Any] | Deferred:
        """
        ``POST /acme/certificates/{host}/renew``: renew one managed host now
        (through the renewal service, so its state and backoff follow).
        Answers 200 with the new certificate's entry, or as ``POST /acme``
        does on failure.
        """
        name = parse_host(host)
        read_arguments(request, ())
        renewal = self._get_renewal()
        if renewal is None:
            return 404, {"message": NOT_CONFIGURED}
        if renewal.state(name) is None:
            return 404, {"message": "host %s is not managed by the renewal service" % (name,)}

        def renewed(certified: Any) -> tuple[int, Any]:
            now = self._clock.seconds()
            body: dict[str, Any] = {"message": "certificate for host %s is renewed" % (name,)}
            if isinstance(certified, CertifiedKey):
                ledger = getattr(self._get_issuer(), "ledger", None)
                issued_by = None if ledger is None else ledger.issued_by(certified)
                body["data"] = describe(name, certified, now, renewal.state(name), issued_by)
            return 200, body

        return maybeDeferred(renewal.renew, name).addCallbacks(renewed, issuance_failure)

    def _storage_failed(self, error: Exception) -> tuple[int, Any]:
        log.warn("Admin API: storage failed: {error}", error=str(error))
        return 503, {"message": "storage unavailable: %s" % (error,)}


def _state(renewal: Any, host: str) -> Any:
    return renewal.state(host) if renewal is not None else None


def _absent(host: str, corrupt: bool) -> tuple[int, Any]:
    body: dict[str, Any] = {"message": "Certificate for host %s not found in storage" % (host,)}
    if corrupt:
        body["detail"] = "the stored value is unreadable (see the log); DELETE removes it"
    return 404, body


def install(admin_site: Any, certificates: CertificatesAdmin) -> None:
    """Add ``PATCH /acme`` and the ``/acme/certificates`` routes to the Admin API site."""
    resource = admin_site.resource
    resource.add_route(b"PATCH", b"/acme", certificates.patch)
    resource.add_route(b"GET", b"/acme/certificates", certificates.list_all)
    resource.add_pattern_route(b"GET", b"/acme/certificates/{host}", certificates.get)
    resource.add_pattern_route(b"DELETE", b"/acme/certificates/{host}", certificates.delete)
    resource.add_pattern_route(b"POST", b"/acme/certificates/{host}/renew", certificates.renew)
