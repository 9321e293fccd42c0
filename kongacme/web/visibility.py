"""
``GET /metrics`` (Prometheus text format) and ``GET /`` (the status page)
on the Admin listener, both read from the daemon's live state.
"""

from __future__ import annotations

from typing import Any

import attrs
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.registry import CollectorRegistry
from twisted.internet.interfaces import IReactorTime
from twisted.web.server import Request

from kongacme import __version__
from kongacme.web.metrics import DaemonCollector, managed_states
from kongacme.web.responses import Raw
from kongacme.web.status_page import SECURITY_HEADERS, Thresholds, issuer_view, render_status_page


def thresholds_of(daemon: Any) -> Thresholds:
    """
    The status page's colours from the daemon's configuration: amber below
    ``acme.renew_threshold_days``, red below ``renewal.critical_days``.
    """
    config = getattr(daemon, "config", None)
    acme = getattr(config, "acme", None)
    renewal = getattr(config, "renewal", None)
    default = Thresholds()
    return Thresholds(
        amber_days=getattr(acme, "renew_threshold_days", default.amber_days),
        red_days=getattr(renewal, "critical_days", default.red_days),
    )


@attrs.define
class Visibility:
    """
    The handlers behind ``/metrics`` and ``/``.

    :ivar registry: this daemon's own Prometheus registry (not the
        process-wide default), holding a :class:`DaemonCollector`.
    """

    _daemon: Any
    _clock: IReactorTime
    registry: CollectorRegistry

    def metrics(self, request: Request) -> Raw:
        """``GET /metrics``: the Prometheus text format, version 0.0.4."""
        return Raw(200, CONTENT_TYPE_PLAIN_0_0_4.encode("ascii"), generate_latest(self.registry),
                   ((b"cache-control", b"no-store"),))

    def status_page(self, request: Request) -> Raw:
        """``GET /``: the HTML status page."""
        cache = getattr(self._daemon, "cache", None)
        body = render_status_page(
            managed_states(self._daemon),
            self._clock.seconds(),
            thresholds=thresholds_of(self._daemon),
            version=__version__,
            cache_size=None if cache is None else len(cache.names()),
            issuers=issuer_view(self._daemon),
        )
        return Raw(200, b"text/html; charset=utf-8", body, SECURITY_HEADERS)


def install_visibility(admin_site: Any, daemon: Any, clock: IReactorTime) -> Visibility:
    """
    Add ``GET /metrics`` and ``GET /`` (``HEAD`` too) to the Admin API site.

    :param admin_site: from :func:`kongacme.web.admin.make_admin_factory`.
    :param daemon: the :class:`kongacme.service.DaemonService` to report on.
    :param clock: "now" (the reactor).
    :return: the :class:`Visibility` (its ``registry`` can take more
        collectors).
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DaemonCollector(daemon, clock))
    visibility = Visibility(daemon, clock, registry)
    admin_site.resource.add_route(b"GET", b"/metrics", visibility.metrics)
    admin_site.resource.add_route(b"GET", b"/", visibility.status_page)
    return visibility
