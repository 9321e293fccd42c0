"""Choosing the lean engine's TLS binding in tests (:mod:`kongacme.tls.session`)."""

from __future__ import annotations

from twisted.trial.unittest import SkipTest

from kongacme.tls import openssl
from kongacme.tls.context import ContextBuilder
from kongacme.tls.session import PyOpenSSLSession, StdSession


def use_binding(builder: ContextBuilder, binding: str) -> None:
    """
    Give every lean-engine session from ``builder`` one binding:
    ``"pyopenssl"`` (no certificate moves to a busy certificate's binding),
    ``"stdlib"`` (every certificate moves to the standard library's ssl
    from its first connection), ``"openssl"`` (to kongacme's own binding,
    :mod:`kongacme.tls.openssl`; the test is skipped where it is not built)
    or ``"shared"`` (the own binding's shared contexts from the first
    connection, each session bringing its certificate; never a context of
    its own).
    """
    if binding == "pyopenssl":
        builder.std.limit = 0
        builder.std.certificate_limit = 0
    elif binding == "shared":
        if openssl.compiled is None:
            raise SkipTest("kongacme.tls._openssl is not built")
        builder.std.binding = "openssl"
        builder.std.limit = 0
        builder.std.certificate_after = 1
    elif binding in ("stdlib", "openssl"):
        if binding == "openssl" and openssl.compiled is None:
            raise SkipTest("kongacme.tls._openssl is not built")
        builder.std.binding = binding
        builder.std.promote_after = 1
    else:
        raise ValueError("no TLS binding %r" % (binding,))


def session_class(binding: str) -> type:
    """The class of a busy certificate's sessions on ``binding`` (see :func:`use_binding`)."""
    if binding in ("openssl", "shared"):
        if openssl.compiled is None:
            raise SkipTest("kongacme.tls._openssl is not built")
        return openssl.compiled.Session  # type: ignore[no-any-return]
    return {"stdlib": StdSession, "pyopenssl": PyOpenSSLSession}[binding]
