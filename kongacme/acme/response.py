"""
A complete answer from the CA, and what it says: Location, Link
relations, Retry-After, problem documents (RFC 8555 §6.7, RFC 7807).
"""

from __future__ import annotations

import json
import re
from typing import Any, Optional
from urllib.parse import urljoin

import attrs
from twisted.web.http_headers import Headers

from kongacme.acme.polling import parse_retry_after
from kongacme.errors import AcmeProblem, AcmeTransportError

ERROR_PREFIX = "urn:ietf:params:acme:error:"


@attrs.frozen
class AcmeResponse:
    """
    A complete answer from the CA.

    :ivar url: the URL requested.
    :ivar code: the HTTP status code.
    :ivar headers: the response headers.
    :ivar body: the whole body.
    """

    url: str
    code: int
    headers: Headers
    body: bytes

    def header(self, name: str) -> Optional[str]:
        """
        The last value of header ``name``, or ``None``.
        """
        values = self.headers.getRawHeaders(name)
        if not values:
            return None
        value = values[-1]
        return value.decode("latin-1") if isinstance(value, bytes) else value

    @property
    def location(self) -> Optional[str]:
        """The ``Location`` header made absolute, or ``None``."""
        value = self.header("Location")
        return urljoin(self.url, value) if value else None

    @property
    def content_type(self) -> str:
        """The media type without parameters, lower-cased (``""`` if none)."""
        value = self.header("Content-Type") or ""
        return value.split(";", 1)[0].strip().lower()

    def json(self) -> dict[str, Any]:
        """
        The body as a JSON object.

        :raises AcmeTransportError: when the body is not a JSON object.
        """
        try:
            value = json.loads(self.body)
        except ValueError as e:
            raise AcmeTransportError(self.url, "malformed JSON in HTTP %d answer: %s" % (self.code, e)) from None
        if not isinstance(value, dict):
            raise AcmeTransportError(self.url, "expected a JSON object, got %s" % (type(value).__name__,))
        return value

    def links(self, rel: str) -> list[str]:
        """
        The absolute URLs of every ``Link`` header entry with relation
        ``rel`` (RFC 8288), in order; all of them, since an ACME answer may
        carry several with the same relation (RFC 8555 §7.4.2).
        """
        found = []
        for value in self.headers.getRawHeaders("Link") or []:
            for target, params in _LINK.findall(value.decode("latin-1") if isinstance(value, bytes) else value):
                for name, quoted, token in _PARAM.findall(params):
                    if name.lower() == "rel" and rel in (quoted or token).split():
                        found.append(urljoin(self.url, target.strip()))
                        break
        return found

    def retry_after(self, now: float) -> Optional[float]:
        """
        Seconds asked for by ``Retry-After``, or ``None``.

        :param now: ``clock.seconds()``.
        """
        return parse_retry_after(self.header("Retry-After"), now)


_LINK = re.compile(r"<([^>]*)>([^<]*)")
_PARAM = re.compile(r';\s*([A-Za-z0-9!#$&+.^_`|~-]+)\s*=\s*(?:"([^"]*)"|([^\s;,]*))')


def problem_from_json(
    jobj: dict[str, Any], status: Optional[int] = None, retry_after: Optional[float] = None
) -> AcmeProblem:
    """
    An :class:`~kongacme.errors.AcmeProblem` from a problem document
    (RFC 7807; RFC 8555 §6.7), as found in an error answer or in the
    ``error`` field of a challenge or order.

    A subproblem's identifier (§6.7.1) is put in front of its detail.
    """
    subproblems = []
    for sub in jobj.get("subproblems") or ():
        if isinstance(sub, dict):
            problem = problem_from_json(sub)
            identifier = sub.get("identifier")
            if isinstance(identifier, dict) and identifier.get("value"):
                problem.detail = "%s: %s" % (identifier["value"], problem.detail)
                problem.args = (str(problem),)
            subproblems.append(problem)
    code = jobj.get("status")
    if status is None and isinstance(code, int) and not isinstance(code, bool):
        status = code
    return AcmeProblem(
        type=str(jobj.get("type") or "about:blank"),
        detail=str(jobj.get("detail") or ""),
        status=status,
        retry_after=retry_after,
        subproblems=tuple(subproblems),
    )


def problem_from_response(response: AcmeResponse, now: float) -> AcmeProblem:
    """
    The :class:`~kongacme.errors.AcmeProblem` for a non-2xx answer: its
    problem document, or ``about:blank`` with the status and the start of
    the body when it has none (RFC 7807 §4.2: then the status code is all
    there is to say).

    :param now: ``clock.seconds()``, for a ``Retry-After`` date.
    """
    retry_after = response.retry_after(now)
    try:
        jobj = json.loads(response.body)
    except ValueError:
        jobj = None
    if (
        isinstance(jobj, dict)
        and isinstance(jobj.get("type", "about:blank"), str)
        and ("type" in jobj or "detail" in jobj)
    ):
        return problem_from_json(jobj, status=response.code, retry_after=retry_after)
    snippet = response.body[:200].decode("utf-8", "replace")
    snippet = "".join(c if c.isprintable() else " " for c in snippet).strip()
    detail = "HTTP %d without a problem document" % (response.code,)
    if snippet:
        detail += ": %r" % (snippet,)
    return AcmeProblem("about:blank", detail, status=response.code, retry_after=retry_after)
