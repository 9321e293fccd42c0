"""
The plain-HTTP side of kongacme: the port-80 listener (http-01 challenge
answers, redirect / proxy / 404 for everything else) and the Admin listener.

The daemon builds them with :func:`make_http_factory` and
:func:`make_admin_factory`; a reload calls :meth:`HTTPSite.reconfigure`.
"""

from kongacme.web.admin import make_admin_factory
from kongacme.web.challenge import HTTPSettings, HTTPSite, make_http_factory
from kongacme.web.tokens import MemoryChallengeTokenStore

__all__ = [
    "HTTPSettings",
    "HTTPSite",
    "MemoryChallengeTokenStore",
    "make_admin_factory",
    "make_http_factory",
]
