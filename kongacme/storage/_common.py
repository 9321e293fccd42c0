"""
Argument checks and expiry arithmetic shared by every
:class:`~kongacme.interfaces.IStorage` provider, so that all of them refuse
the same misuse in the same way (the conformance suite checks it).
"""

from __future__ import annotations

import math
from typing import Optional


def check_key(key: object, what: str = "key") -> str:
    """
    :raises TypeError: unless ``key`` is a ``str``.
    :raises ValueError: if it is empty.
    """
    if not isinstance(key, str):
        raise TypeError(f"{what} must be a str, not {type(key).__name__}")
    if not key:
        raise ValueError(f"{what} must not be empty")
    return key


def check_prefix(prefix: object) -> str:
    """
    :raises TypeError: unless ``prefix`` is a ``str`` (``""`` lists every key).
    """
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a str, not {type(prefix).__name__}")
    return prefix


def check_value(value: object) -> bytes:
    """
    :raises TypeError: unless ``value`` is ``bytes``.
    """
    if not isinstance(value, bytes):
        raise TypeError(f"value must be bytes, not {type(value).__name__}")
    return value


def check_ttl(ttl: object) -> Optional[float]:
    """
    :return: ``ttl`` as a float, or ``None`` (no expiry).
    :raises TypeError: unless ``ttl`` is ``None`` or a number.
    :raises ValueError: unless it is positive and finite. (Kong's shm would
        read 0 as "never expires" and Redis refuses ``PX 0``; refusing it
        keeps every provider alike.)
    """
    if ttl is None:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)):
        raise TypeError(f"ttl must be a number of seconds or None, not {type(ttl).__name__}")
    if not (ttl > 0 and math.isfinite(ttl)):
        raise ValueError(f"ttl must be a positive number of seconds, not {ttl!r}")
    return float(ttl)


def expiry(now: float, ttl: Optional[float]) -> Optional[float]:
    """The absolute expiry time of an entry written at ``now``, or ``None``."""
    return None if ttl is None else now + ttl


def expired(expires_at: Optional[float], now: float) -> bool:
    """Whether an entry expiring at ``expires_at`` is gone at ``now``."""
    return expires_at is not None and now >= expires_at
