"""
The read-only status page served at ``GET /`` on the Admin listener: one
server-rendered HTML document (inline CSS, an inline SVG timeline, no
script, no external asset, so it works offline and under a strict
Content-Security-Policy).

Days left are coloured against the configuration: **red** when expired or
fewer than ``renewal.critical_days`` (7) days are left, **amber** once
renewal is due (fewer than ``acme.renew_threshold_days``, 14, left),
**green** otherwise; grey when the expiry is unknown.

Every value shown (host names come from storage) goes through
:func:`html.escape`.
"""

from __future__ import annotations

import datetime
import heapq
import html
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import attrs

from kongacme.renewal.state import RenewalState

DAY = 86400.0

#: Days of the expiry timeline.
TIMELINE_DAYS = 90

#: Certificates listed on the page at most (a page of 100,000 was 64 MB and
#: took the reactor 4.4 s to build, every minute while open).
STATUS_PAGE_ROWS = 500

#: Headers sent with the page: nothing but inline CSS may load or run.
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-security-policy",
     b"default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"cache-control", b"no-store"),
    (b"referrer-policy", b"no-referrer"),
)


@attrs.frozen
class Thresholds:
    """
    Where the days-left colour changes.

    :ivar amber_days: renewal is due below this (``acme.renew_threshold_days``).
    :ivar red_days: critical below this (``renewal.critical_days``).
    """

    amber_days: float = 14.0
    red_days: float = 7.0

    def level(self, seconds_left: Optional[float]) -> str:
        """``green``, ``amber``, ``red`` or ``unknown`` for ``seconds_left``."""
        if seconds_left is None:
            return "unknown"
        days = seconds_left / DAY
        if days < self.red_days:
            return "red"
        if days < self.amber_days:
            return "amber"
        return "green"


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _date(seconds: Optional[float]) -> str:
    if seconds is None:
        return "—"
    moment = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def _relative(seconds: float) -> str:
    """``in 3 d`` / ``5 h ago`` for a difference in seconds."""
    amount = abs(seconds)
    if amount >= 2 * DAY:
        text = "%d d" % (amount // DAY,)
    elif amount >= 3600:
        text = "%d h" % (amount // 3600,)
    else:
        text = "%d min" % (max(1, amount // 60),)
    return ("in " + text) if seconds >= 0 else (text + " ago")


def _days_left(seconds_left: Optional[float]) -> str:
    if seconds_left is None:
        return "unknown"
    if seconds_left <= 0:
        return "expired %s" % (_relative(seconds_left),)
    return "%.1f days" % (seconds_left / DAY,)


_CSS = """
:root { color-scheme: light; }
body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 24px; color: #1d2330;
       background: #f6f7f9; }
h1 { font-size: 20px; margin: 0 0 4px; }
h2 { font-size: 16px; margin: 24px 0 8px; }
.meta { color: #5b6475; margin: 0 0 16px; }
.summary { display: flex; gap: 12px; margin: 0 0 8px; padding: 0; list-style: none; }
.summary li { background: #fff; border: 1px solid #dde1e8; border-radius: 6px; padding: 8px 14px; }
.summary b { font-size: 18px; display: block; }
table { border-collapse: collapse; width: 100%; background: #fff; border: 1px solid #dde1e8; }
th, td { text-align: left; padding: 6px 10px; border-bottom: 1px solid #eceff3; vertical-align: top; }
th { background: #eef1f5; font-weight: 600; }
td.expires, td.next { white-space: nowrap; }
td.host { font-family: ui-monospace, Menlo, Consolas, monospace; word-break: break-all; }
td.error { color: #9b1c1c; max-width: 28em; overflow-wrap: anywhere; }
.days { display: inline-block; min-width: 6em; padding: 1px 8px; border-radius: 10px; font-weight: 600;
        text-align: center; white-space: nowrap; }
.days.level-green { background: #d7f2dc; color: #1e6b2f; }
.days.level-amber { background: #fdebc8; color: #8a5300; }
.days.level-red { background: #fbd5d5; color: #9b1c1c; }
.days.level-unknown { background: #e5e7eb; color: #4b5563; }
.admitted-no { color: #6b7280; font-style: italic; }
tr.failing td.host::after { content: " ⚠"; color: #b91c1c; }
.empty { color: #5b6475; }
svg.timeline { background: #fff; border: 1px solid #dde1e8; max-width: 100%; height: auto; }
svg.timeline text { font: 11px system-ui, sans-serif; fill: #1d2330; }
svg.timeline .axis { stroke: #c7ccd6; }
svg.timeline .grid { stroke: #eceff3; }
svg.timeline .threshold { stroke: #d97706; stroke-dasharray: 4 3; }
svg.timeline .critical { stroke: #dc2626; stroke-dasharray: 4 3; }
svg.timeline .bar.level-green { fill: #43a047; }
svg.timeline .bar.level-amber { fill: #f59e0b; }
svg.timeline .bar.level-red { fill: #dc2626; }
svg.timeline .bar.level-unknown { fill: #9ca3af; }
.legend span { margin-right: 14px; }
.swatch { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 4px; }
"""


@attrs.frozen
class IssuerView:
    """
    The CAs on the status page: each with its role and health, and which
    CA issued each host's certificate (when recorded).

    :ivar cas: ``IssuerChain.status()``: dicts with ``directory``, ``role``,
        ``available``, ``last_error``, ``issued``, ``failed``, ``refused``.
    :ivar issued_by: ``host -> IssuedBy or None``, asked only for the
        hosts the page lists.
    """

    cas: Sequence[Mapping[str, Any]] = ()
    issued_by: Callable[[str], Any] = lambda host: None


def issuer_view(daemon: Any) -> Optional[IssuerView]:
    """
    The :class:`IssuerView` of ``daemon`` (its ``issuer`` chain and
    ``cache``), or ``None`` without an issuer chain.
    """
    chain = getattr(daemon, "issuer", None)
    ledger = getattr(chain, "ledger", None)
    if ledger is None:
        return None
    cache = getattr(daemon, "cache", None)

    def issued_by(host: str) -> Any:
        certified = None if cache is None else cache.get(host)
        return None if certified is None else ledger.issued_by(certified)

    return IssuerView(chain.status(), issued_by)


def _issuers_table(view: IssuerView) -> str:
    rows = "".join(
        '<tr class="ca %s"><td>%s</td><td class="directory">%s</td><td>%s</td><td>%d</td><td>%d</td><td>%s</td></tr>'
        % (
            "up" if ca["available"] else "down",
            _e(ca["role"]),
            _e(ca["directory"]),
            "up" if ca["available"] else '<span class="admitted-no">failing</span>',
            ca["issued"],
            ca["failed"],
            _e(ca["last_error"] or "—"),
        )
        for ca in view.cas
    )
    return (
        '<table class="issuers"><thead><tr><th>Role</th><th>Directory</th><th>State</th><th>Issued</th>'
        "<th>Failed (CA's fault)</th><th>Last error</th></tr></thead><tbody>%s</tbody></table>" % (rows,)
    )


def _issuer_cell(state: RenewalState, issued_by: Any) -> str:
    text = _e(state.issuer or "—")
    if issued_by is not None:
        text += "<br><small>%s%s</small>" % ("fallback · " if issued_by.fallback else "", _e(issued_by.directory))
    return text


def _row(state: RenewalState, now: float, thresholds: Thresholds, issued_by: Any = None) -> str:
    left = None if state.not_after is None else state.not_after - now
    level = thresholds.level(left)
    classes = ["cert", "level-" + level]
    if state.failures or state.last_error:
        classes.append("failing")
    if not state.admitted:
        classes.append("not-admitted")
    next_time = state.next_attempt if state.next_attempt is not None else state.due_at
    if not state.admitted:
        next_renewal = '<span class="admitted-no">not renewed</span>'
    elif next_time is None:
        next_renewal = "—"
    else:
        next_renewal = "%s<br><small>%s</small>" % (_e(_date(next_time)), _e(_relative(next_time - now)))
    error = "—" if not state.last_error else _e(state.last_error)
    if state.failures:
        error += "<br><small>%d failure(s) in a row</small>" % (state.failures,)
    return (
        '<tr class="%s">'
        '<td class="host">%s</td>'
        '<td class="issuer">%s</td>'
        '<td class="expires">%s</td>'
        '<td><span class="days level-%s">%s</span></td>'
        '<td class="next">%s</td>'
        '<td class="%s">%s</td>'
        '<td class="admitted">%s</td>'
        "</tr>"
    ) % (
        " ".join(classes),
        _e(state.host),
        _issuer_cell(state, issued_by),
        _e(_date(state.not_after)),
        level,
        _e(_days_left(left)),
        next_renewal,
        "error" if state.last_error else "no-error",
        error,
        "yes" if state.admitted else '<span class="admitted-no">no</span>',
    )


def _urgency(state: RenewalState) -> tuple[bool, float, str]:
    """Sorts failing certificates first, then by expiry (unknown last)."""
    failing = bool(state.failures or state.last_error)
    return (not failing, state.not_after if state.not_after is not None else float("inf"), state.host)


def _timeline(states: Sequence[RenewalState], now: float, thresholds: Thresholds) -> str:
    """An inline SVG: one bar per certificate from now to its expiry (capped at 90 days)."""
    label_width, plot_width, row_height, top = 240, 620, 22, 28
    right = label_width + plot_width
    height = top + row_height * max(1, len(states)) + 10
    scale = plot_width / TIMELINE_DAYS

    def x(days: float) -> float:
        return label_width + max(0.0, min(float(TIMELINE_DAYS), days)) * scale

    parts = [
        '<svg class="timeline" xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" '
        'role="img" aria-label="Certificate expiries over the next %d days">'
        % (right + 60, height, right + 60, height, TIMELINE_DAYS)
    ]
    for day in range(0, TIMELINE_DAYS + 1, 15):
        parts.append('<line class="grid" x1="%.1f" y1="%d" x2="%.1f" y2="%d"/>' % (x(day), top - 6, x(day), height - 6))
        label = "now" if day == 0 else _date(now + day * DAY)[:10]
        parts.append('<text class="tick" x="%.1f" y="14" text-anchor="middle">%s</text>' % (x(day), _e(label)))
    for name, days in (("critical", thresholds.red_days), ("threshold", thresholds.amber_days)):
        if days <= TIMELINE_DAYS:
            parts.append('<line class="%s" x1="%.1f" y1="%d" x2="%.1f" y2="%d"/>'
                         % (name, x(days), top - 6, x(days), height - 6))
    ordered = sorted(states, key=lambda s: (s.not_after is None, s.not_after or 0.0, s.host))
    for index, state in enumerate(ordered):
        y = top + index * row_height
        host = state.host if len(state.host) <= 34 else state.host[:33] + "…"
        left = None if state.not_after is None else state.not_after - now
        level = thresholds.level(left)
        parts.append('<g class="entry level-%s">' % (level,))
        parts.append('<title>%s: %s</title>' % (_e(state.host), _e(_date(state.not_after))))
        parts.append('<text class="label" x="%d" y="%d" text-anchor="end">%s</text>'
                     % (label_width - 8, y + 14, _e(host)))
        if left is None:
            parts.append('<text x="%d" y="%d">expiry unknown</text>' % (label_width + 4, y + 14))
        elif left <= 0:
            parts.append('<rect class="bar level-red" x="%d" y="%d" width="4" height="14"/>' % (label_width, y + 3))
            parts.append('<text x="%d" y="%d">expired</text>' % (label_width + 8, y + 14))
        else:
            days = left / DAY
            end = x(days)
            parts.append('<rect class="bar level-%s" x="%d" y="%d" width="%.1f" height="14" rx="2"/>'
                         % (level, label_width, y + 3, max(2.0, end - label_width)))
            suffix = "%.0f d" % (days,) if days <= TIMELINE_DAYS else "&gt; %d d" % (TIMELINE_DAYS,)
            parts.append('<text class="days-label" x="%.1f" y="%d">%s</text>' % (end + 4, y + 14, suffix))
        parts.append("</g>")
    parts.append('<line class="axis" x1="%d" y1="%d" x2="%d" y2="%d"/>' % (label_width, top - 6, label_width,
                                                                          height - 6))
    parts.append("</svg>")
    return "".join(parts)


def render_status_page(
    states: Iterable[RenewalState],
    now: float,
    *,
    thresholds: Thresholds = Thresholds(),
    version: str = "",
    cache_size: Optional[int] = None,
    issuers: Optional[IssuerView] = None,
    max_rows: int = STATUS_PAGE_ROWS,
) -> bytes:
    """
    The status page.

    :param states: every managed certificate.
    :param now: epoch seconds (the daemon's clock).
    :param thresholds: where days left turn amber and red.
    :param version: kongacme's version, shown in the header.
    :param cache_size: names in the certificate cache, shown when given.
    :param issuers: the CAs and who issued what (an "ACME CAs" section and
        the directory under each certificate's issuer), when given.
    :param max_rows: the most certificates listed (and drawn): beyond it,
        those needing attention first (failing, then the soonest expiry);
        the counts cover all.
    :return: the UTF-8 HTML document.
    """
    states = list(states)
    shown = states if len(states) <= max_rows else heapq.nsmallest(max_rows, states, key=_urgency)
    shown = sorted(shown, key=lambda state: state.host)
    levels = [thresholds.level(None if s.not_after is None else s.not_after - now) for s in states]
    failing = sum(1 for s in states if s.failures or s.last_error)
    summary = [
        ("managed", len(states)),
        ("healthy", levels.count("green")),
        ("renewal due", levels.count("amber")),
        ("critical or expired", levels.count("red")),
        ("failing", failing),
        ("not admitted", sum(1 for s in states if not s.admitted)),
    ]
    if cache_size is not None:
        summary.append(("names in cache", cache_size))
    if states:
        rows = "".join(
            _row(state, now, thresholds, None if issuers is None else issuers.issued_by(state.host)) for state in shown
        )
        table = (
            '<table class="certificates"><thead><tr><th>Host</th><th>Issuer</th><th>Expires</th>'
            "<th>Days left</th><th>Next renewal</th><th>Last error</th><th>Admitted</th></tr></thead>"
            "<tbody>%s</tbody></table>" % (rows,)
        )
        if len(shown) < len(states):
            table = (
                '<p class="meta">Showing the %d of %d certificates that need attention first (failing, then '
                "the soonest expiry). The full list: <code>GET /acme/certificates</code>.</p>%s"
                % (len(shown), len(states), table)
            )
        timeline = _timeline(shown, now, thresholds)
    else:
        table = '<p class="empty">No managed certificates yet.</p>'
        timeline = '<p class="empty">Nothing expires.</p>'
    legend = (
        '<p class="legend">'
        '<span><i class="swatch" style="background:#43a047"></i>more than %g days left</span>'
        '<span><i class="swatch" style="background:#f59e0b"></i>renewal due (under %g days)</span>'
        '<span><i class="swatch" style="background:#dc2626"></i>critical (under %g days) or expired</span>'
        "</p>" % (thresholds.amber_days, thresholds.amber_days, thresholds.red_days)
    )
    document = (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta http-equiv="refresh" content="60">'
        "<title>kongacme status</title><style>%s</style></head><body>"
        "<h1>kongacme certificates</h1>"
        '<p class="meta">%s · generated %s · refreshes every minute</p>'
        '<ul class="summary">%s</ul>'
        "<h2>Certificates</h2>%s"
        "<h2>Expiries, next %d days</h2>%s%s%s"
        "</body></html>\n"
    ) % (
        _CSS,
        _e("kongacme " + version if version else "kongacme"),
        _e(_date(now)),
        "".join('<li class="count-%s"><b>%d</b>%s</li>' % (_e(name.replace(" ", "-")), count, _e(name))
                for name, count in summary),
        table,
        TIMELINE_DAYS,
        timeline,
        legend,
        "" if issuers is None else "<h2>ACME CAs</h2>" + _issuers_table(issuers),
    )
    return document.encode("utf-8")
