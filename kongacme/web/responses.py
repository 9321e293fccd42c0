"""
Admin API answers that are not JSON: a handler returns a :class:`Raw` and
the Admin resource writes it as it is (the metrics text, the status page).
"""

from __future__ import annotations

import attrs
from twisted.web.server import Request


@attrs.frozen
class Raw:
    """
    A finished response: status, content type and body bytes.

    :ivar code: the HTTP status code.
    :ivar content_type: the ``Content-Type`` value, e.g.
        ``b"text/html; charset=utf-8"``.
    :ivar body: the body; a ``HEAD`` request gets the headers only (with
        the ``Content-Length`` of the body it would have got).
    :ivar headers: more ``(name, value)`` header pairs (bytes).
    """

    code: int
    content_type: bytes
    body: bytes
    headers: tuple[tuple[bytes, bytes], ...] = ()

    def render(self, request: Request) -> bytes:
        """Set status and headers on ``request``; return what to write."""
        request.setResponseCode(self.code)
        request.setHeader(b"content-type", self.content_type)
        for name, value in self.headers:
            request.setHeader(name, value)
        request.setHeader(b"content-length", b"%d" % (len(self.body),))
        return b"" if request.method == b"HEAD" else self.body
