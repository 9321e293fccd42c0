"""Choosing the lean engine's TLS binding in tests (:mod:`kongacme.tls.session`)."""

from __future__ import annotations

from kongacme.tls.context import ContextBuilder


def use_binding(builder: ContextBuilder, binding: str) -> None:
    """
    Give every lean-engine session from ``builder`` one binding:
    ``"pyopenssl"`` (no certificate moves to the standard library's ssl)
    or ``"stdlib"`` (every certificate does, from its first connection).
    """
    if binding == "pyopenssl":
        builder.std.limit = 0
    elif binding == "stdlib":
        builder.std.promote_after = 1
    else:
        raise ValueError("no TLS binding %r" % (binding,))
