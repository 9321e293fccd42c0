"""
ACME Renewal Information (ARI, RFC 9773): the CA's suggested renewal
window for a certificate, and the ``replaces`` value a renewal order
carries.
"""

from __future__ import annotations

import base64
import datetime
from typing import Any, Optional

import attrs
from cryptography import x509
from twisted.internet.defer import Deferred, succeed

from kongacme.errors import AcmeTransportError

#: RFC 9773 §4.3: when the CA gives no (usable) Retry-After, ask again in
#: about six hours.
DEFAULT_RETRY_AFTER = 6 * 3600.0
#: Retry-After values outside these bounds are clamped (a CA asking every
#: second, or once a year, is not followed blindly).
MIN_RETRY_AFTER = 60.0
MAX_RETRY_AFTER = 86400.0


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def cert_id(cert: x509.Certificate) -> str:
    """
    The certificate's ARI identifier (RFC 9773 §4.1): the base64url of the
    Authority Key Identifier's keyIdentifier, a dot, and the base64url of
    the DER encoding of the serial number's value (two's complement, a
    leading zero byte when the high bit is set).

    :raises ValueError: when the certificate has no AKI keyIdentifier
        (such a certificate cannot be named to ARI).
    """
    try:
        aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    except x509.ExtensionNotFound:
        raise ValueError("certificate has no Authority Key Identifier") from None
    if not aki.key_identifier:
        raise ValueError("certificate's Authority Key Identifier has no keyIdentifier")
    serial = cert.serial_number
    serial_bytes = serial.to_bytes((serial.bit_length() + 8) // 8, "big", signed=True)
    return "%s.%s" % (_b64(aki.key_identifier), _b64(serial_bytes))


@attrs.frozen
class RenewalWindow:
    """
    The CA's answer for one certificate.

    :ivar start: the window's start (epoch seconds).
    :ivar end: its end (epoch seconds), after ``start``.
    :ivar retry_after: seconds until the window should be fetched again.
    :ivar explanation_url: the CA's explanation, when it gives one (for
        example when it asks for an early renewal after an incident).
    """

    start: float
    end: float
    retry_after: float
    explanation_url: Optional[str] = None


def _timestamp(value: Any, field: str, url: str) -> float:
    if not isinstance(value, str):
        raise AcmeTransportError(url, "renewalInfo %s is not an RFC 3339 string" % (field,))
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise AcmeTransportError(url, "renewalInfo %s is not an RFC 3339 time: %r" % (field, value[:64])) from None
    if moment.tzinfo is None:
        raise AcmeTransportError(url, "renewalInfo %s has no time zone: %r" % (field, value[:64]))
    return moment.timestamp()


def parse_renewal_info(jobj: Any, url: str, retry_after: Optional[float]) -> RenewalWindow:
    """
    Read a renewalInfo answer (RFC 9773 §4.2).

    :param retry_after: seconds from the answer's ``Retry-After``, if any.
    :raises AcmeTransportError: when the answer is not a valid window.
    """
    if not isinstance(jobj, dict) or not isinstance(jobj.get("suggestedWindow"), dict):
        raise AcmeTransportError(url, "renewalInfo answer without a suggestedWindow object")
    window = jobj["suggestedWindow"]
    start = _timestamp(window.get("start"), "suggestedWindow.start", url)
    end = _timestamp(window.get("end"), "suggestedWindow.end", url)
    if end <= start:
        # §4.2: "end" MUST be after "start"; such a window is unusable.
        raise AcmeTransportError(url, "renewalInfo window ends before it starts")
    explanation = jobj.get("explanationURL")
    if retry_after is None:
        retry_after = DEFAULT_RETRY_AFTER
    retry_after = min(max(retry_after, MIN_RETRY_AFTER), MAX_RETRY_AFTER)
    return RenewalWindow(start, end, retry_after, explanation if isinstance(explanation, str) else None)


def fetch_renewal_info(client: Any, cert: x509.Certificate) -> Deferred[Optional[RenewalWindow]]:
    """
    GET the renewal window for ``cert`` from the CA (an unauthenticated
    GET, RFC 9773 §4.2).

    :param client: an :class:`~kongacme.acme.client.AcmeClient`.
    :return: ``Deferred`` firing with a :class:`RenewalWindow`, or ``None``
        when the CA's directory has no ``renewalInfo`` (or the certificate
        has no AKI); failing with :class:`~kongacme.errors.AcmeError` when
        the CA is unreachable or answers garbage.
    """
    base = client.renewal_info_url
    if base is None:
        return succeed(None)
    try:
        ident = cert_id(cert)
    except ValueError:
        return succeed(None)
    url = base.rstrip("/") + "/" + ident

    async def fetch() -> RenewalWindow:
        response = await client.transport.get(url)
        return parse_renewal_info(response.json(), url, response.retry_after(client.clock.seconds()))

    return Deferred.fromCoroutine(fetch())
