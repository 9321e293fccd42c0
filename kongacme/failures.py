"""
One line of words for a failed network operation, for log lines and the
``reason`` of the errors the ACME client, the storage clients and the proxy
raise: Twisted's wrapped failures unwrapped, OpenSSL's error lists read,
the commonest causes in plain words.
"""

from __future__ import annotations

from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet.error import ConnectionRefusedError
from twisted.python.failure import Failure
from twisted.web.client import RequestTransmissionFailed, ResponseFailed, ResponseNeverReceived


def _openssl_reasons(error: SSL.Error) -> str:
    # pyOpenSSL's errors carry a list of (library, function, reason) tuples.
    found = error.args[0] if error.args and isinstance(error.args[0], list) else ()
    return ", ".join(str(item[-1]) for item in found if isinstance(item, tuple))


def describe_failure(failure: Failure) -> str:
    """
    A one-line account of ``failure``.

    Twisted's web client wraps the real causes in ``reasons`` lists: those
    are described in turn, behind what the wrapper says (the request was not
    sent, no answer came, the answer was cut off).

    :param failure: any failure; unknown ones read ``"Type: message"``.
    """
    value = failure.value
    nested = [r for r in getattr(value, "reasons", None) or () if isinstance(r, Failure)]
    inner = "; ".join(describe_failure(r) for r in nested)
    for kind, words in (
        (ResponseNeverReceived, "connection lost before an answer"),
        (ResponseFailed, "answer cut off"),
        (RequestTransmissionFailed, "request not sent"),
    ):
        if isinstance(value, kind):
            return f"{words} ({inner})" if inner else words
    if inner:
        return inner
    # twisted.web._newclient's private _DataLoss and ParseError, by name.
    if type(value).__name__ == "_DataLoss":
        return "body incomplete"
    if type(value).__name__ == "ParseError":
        return f"not an HTTP answer: {value.args[0] if value.args else value}"
    if isinstance(value, ConnectionRefusedError):
        return "connection refused"
    if isinstance(value, SSL.Error):
        return f"TLS handshake failed ({_openssl_reasons(value) or value})"
    if isinstance(value, VerificationError):
        return f"TLS handshake failed (the certificate does not name the server: {value})"
    text = str(value).strip()
    name = type(value).__name__
    return f"{name}: {text}" if text and text != name else name
