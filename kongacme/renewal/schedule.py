"""
When to renew and when to retry: pure functions of times (epoch seconds),
so every rule is tested without a clock.
"""

from __future__ import annotations

import random
from typing import Optional

DAY = 86400.0


def due_time(not_before: float, not_after: float, threshold_days: float) -> tuple[float, str]:
    """
    When a certificate is due for renewal, and by which rule.

    Kong's rule renews when ``not_after - renew_threshold_days <= now``.
    For a short-lived certificate (lifetime under three times the
    threshold: a 6-day certificate under the 14-day default) that rule
    would renew on every check, so the renewal starts when a third of the
    lifetime remains instead, as Let's Encrypt advises.

    :return: ``(due_at, rule)``, rule ``threshold`` or ``third_of_lifetime``.
    """
    lifetime = max(0.0, not_after - not_before)
    threshold = threshold_days * DAY
    third = lifetime / 3.0
    if third < threshold:
        return not_after - third, "third_of_lifetime"
    return not_after - threshold, "threshold"


def pick_in_window(start: float, end: float, rng: random.Random) -> float:
    """
    A uniformly random time in the CA's ARI window (RFC 9773 §4.2), so a
    fleet of clients does not renew at the same moment.
    """
    return start + rng.random() * (end - start)


def retry_delay(
    failures: int,
    initial: float,
    maximum: float,
    seconds_left: float,
    rng: random.Random,
    retry_after: Optional[float] = None,
) -> float:
    """
    Seconds until the next attempt after ``failures`` failed attempts in a
    row: ``initial`` doubled per failure, at most ``maximum``, and at most
    a tenth of the time left before expiry (so a failing renewal is tried
    more and more often as expiry nears, never less than ``initial``);
    ±20 % jitter; never sooner than the CA's ``Retry-After``.
    """
    delay = initial * (2.0 ** max(0, failures - 1))
    delay = min(delay, maximum, max(initial, seconds_left / 10.0))
    delay *= 0.8 + 0.4 * rng.random()
    if retry_after is not None and retry_after > delay:
        delay = retry_after
    return delay


def severity(seconds_left: float, threshold_days: float, critical_days: float) -> str:
    """
    The log level for a failed renewal: ``warn`` while there is time,
    ``error`` once inside the renewal threshold's last half, ``critical``
    within ``critical_days`` of expiry or after it.
    """
    if seconds_left <= critical_days * DAY:
        return "critical"
    if seconds_left <= threshold_days * DAY / 2.0:
        return "error"
    return "warn"
