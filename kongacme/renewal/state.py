"""
What the renewal service knows about one managed certificate, in the form
the Admin API, the metrics and the status page report it.
"""

from __future__ import annotations

import datetime
from typing import Any, Optional

import attrs


def iso(seconds: Optional[float]) -> Optional[str]:
    """An epoch time as ISO 8601 UTC with a ``Z``, ``None`` stays ``None``."""
    if seconds is None:
        return None
    moment = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).replace(microsecond=0)
    return moment.isoformat().replace("+00:00", "Z")


@attrs.define
class RenewalState:
    """
    One managed host.

    :ivar host: the name.
    :ivar not_before: the certificate's start (epoch seconds).
    :ivar not_after: its expiry (epoch seconds).
    :ivar issuer: the issuer's common name (or full DN when it has none).
    :ivar admitted: whether the config still admits the host; a host no
        longer admitted is not renewed (its certificate stays in storage
        until it expires).
    :ivar due_at: when renewal is due (epoch seconds).
    :ivar rule: what set ``due_at``: ``threshold`` (Kong's
        ``renew_threshold_days``), ``third_of_lifetime`` (short-lived
        certificates), ``ari`` (a time picked in the CA's window) or
        ``unreadable`` (the stored certificate could not be parsed).
    :ivar ari_window: the CA's suggested ``(start, end)`` (epoch seconds).
    :ivar next_attempt: when the service will next try (after a failure,
        the backoff; else ``due_at``); ``None`` when not renewed.
    :ivar last_attempt: when a renewal was last tried.
    :ivar last_success: when one last succeeded.
    :ivar last_error: the last attempt's error, ``None`` after a success.
    :ivar failures: failed attempts in a row.
    """

    host: str
    not_before: Optional[float] = None
    not_after: Optional[float] = None
    issuer: Optional[str] = None
    admitted: bool = True
    due_at: Optional[float] = None
    rule: str = "threshold"
    ari_window: Optional[tuple[float, float]] = None
    next_attempt: Optional[float] = None
    last_attempt: Optional[float] = None
    last_success: Optional[float] = None
    last_error: Optional[str] = None
    failures: int = 0

    def to_json(self, now: float) -> dict[str, Any]:
        """A JSON-able summary (times in ISO 8601 UTC)."""
        return {
            "host": self.host,
            "not_before": iso(self.not_before),
            "not_after": iso(self.not_after),
            "seconds_left": None if self.not_after is None else round(self.not_after - now),
            "issuer": self.issuer,
            "admitted": self.admitted,
            "renewal_due": iso(self.due_at),
            "renewal_rule": self.rule,
            "ari_window": None if self.ari_window is None else [iso(self.ari_window[0]), iso(self.ari_window[1])],
            "next_attempt": iso(self.next_attempt),
            "last_attempt": iso(self.last_attempt),
            "last_success": iso(self.last_success),
            "last_error": self.last_error,
            "failures_in_a_row": self.failures,
        }
