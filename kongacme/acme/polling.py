"""
Waiting for an ACME resource to leave a transient state: an authorization
being validated (RFC 8555 §7.5.1), an order being issued (§7.4).

The CA may say when to ask again with ``Retry-After`` (§8.2 for challenges,
§7.4 for orders; the header's syntax is RFC 9110 §10.2.3: delay-seconds or an
HTTP-date). Without it we poll on a short doubling schedule: a local CA such
as Pebble validates in tens of milliseconds, so the first wait is short; a
public CA is not hurt by a few early polls, and the schedule soon settles at
one request every couple of seconds.

All waiting goes through the injected clock, so tests drive it with
:class:`twisted.internet.task.Clock`.
"""

from __future__ import annotations

import datetime
import email.utils
from typing import Any, Awaitable, Callable, Iterator, Optional, TypeVar

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

from kongacme.errors import AcmeError

_log = Logger()

T = TypeVar("T")


class PollTimeout(AcmeError):
    """
    A resource did not reach a final state within the allowed time.

    :ivar what: what was being waited for, e.g. ``"authorization of
        example.com"``.
    :ivar waited: seconds waited.
    """

    def __init__(self, what: str, waited: float):
        self.what = what
        self.waited = waited
        super().__init__("timed out waiting for %s after %.1f s" % (what, waited))


def _positive(instance: object, attribute: attrs.Attribute, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{attribute.name} must be a positive number, not {value!r}")


@attrs.frozen
class PollSchedule:
    """
    When to ask again if the CA gives no ``Retry-After``: ``first`` seconds,
    then ``factor`` times longer each time, never more than ``longest``; give
    up once ``total`` seconds have passed since the first request.

    :ivar first: the first wait.
    :ivar factor: growth of each wait over the previous one (>= 1).
    :ivar longest: the cap on a single wait.
    :ivar total: how long to wait in all before :class:`PollTimeout`.
    """

    first: float = attrs.field(default=0.01, validator=_positive)
    factor: float = attrs.field(default=2.0, validator=_positive)
    longest: float = attrs.field(default=2.0, validator=_positive)
    total: float = attrs.field(default=120.0, validator=_positive)

    def __attrs_post_init__(self) -> None:
        if self.factor < 1:
            raise ValueError(f"factor must be at least 1, not {self.factor!r}")

    def delays(self) -> Iterator[float]:
        """
        The waits in order, without end: ``first``, ``first * factor``, …
        capped at ``longest``.
        """
        delay = min(self.first, self.longest)
        while True:
            yield delay
            delay = min(delay * self.factor, self.longest)


#: The schedule used when none is given: 10 ms doubling to 2 s, 120 s in all
#: (eight polls in the first 2.5 s, then one every 2 s).
DEFAULT_SCHEDULE = PollSchedule()


def parse_retry_after(value: Optional[str | bytes], now: float) -> Optional[float]:
    """
    Seconds to wait according to a ``Retry-After`` header value.

    :param value: the header value: delay-seconds (``"120"``) or an
        HTTP-date (``"Fri, 31 Dec 1999 23:59:59 GMT"``), or ``None``.
    :param now: the current POSIX time (``clock.seconds()``), to turn a date
        into a delay.
    :return: seconds (never negative; a date in the past gives ``0.0``), or
        ``None`` when the header is absent or unparseable.
    """
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    value = value.strip()
    if not value:
        return None
    if value.isdigit():
        return float(int(value))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        # An HTTP-date is always GMT (RFC 9110 §5.6.7); parsedate_to_datetime
        # leaves "-0000" naive.
        when = when.replace(tzinfo=datetime.timezone.utc)
    return max(0.0, when.timestamp() - now)


async def _poll(
    clock: IReactorTime,
    fetch: Callable[[], Awaitable[T]],
    done: Callable[[T], bool],
    retry_after: Callable[[T], Optional[float]],
    what: str,
    schedule: PollSchedule,
    wait_first: bool,
) -> T:
    start = clock.seconds()
    deadline = start + schedule.total
    delays = schedule.delays()
    attempt = 0
    if wait_first:
        await deferLater(clock, next(delays))
    while True:
        attempt += 1
        result = await fetch()
        if done(result):
            return result
        now = clock.seconds()
        if now >= deadline:
            raise PollTimeout(what, now - start)
        delay = retry_after(result)
        if delay is None:
            delay = next(delays)
        # The CA's Retry-After is honoured, but never past our own deadline:
        # one last look at the deadline, then give up.
        delay = max(0.0, min(delay, deadline - now))
        _log.debug(
            "polling {what}: attempt {attempt} not final, next in {delay:.3f} s",
            what=what,
            attempt=attempt,
            delay=delay,
        )
        await deferLater(clock, delay)


def poll(
    clock: IReactorTime,
    fetch: Callable[[], Awaitable[T]],
    done: Callable[[T], bool],
    *,
    what: str,
    retry_after: Callable[[T], Optional[float]] = lambda result: None,
    schedule: PollSchedule = DEFAULT_SCHEDULE,
    wait_first: bool = False,
) -> Deferred[T]:
    """
    Call ``fetch`` until ``done`` says its result is final.

    Between calls wait ``retry_after(result)`` seconds when that is not
    ``None`` (the CA's ``Retry-After``), else the next step of ``schedule``;
    no wait goes past ``schedule.total`` seconds after the start.

    :param clock: provides :class:`~twisted.internet.interfaces.IReactorTime`.
    :param fetch: zero-argument callable returning a ``Deferred`` (or other
        awaitable) of the resource's current state. Its failures end the
        polling.
    :param done: whether a result is final (valid *or* invalid: the caller
        judges which).
    :param what: named in the timeout error and logs.
    :param retry_after: seconds the CA asked us to wait, from a result.
    :param schedule: the waits to use without ``Retry-After``.
    :param wait_first: wait one step before the first ``fetch`` (when the
        caller has just learnt the state from another response).
    :return: ``Deferred`` firing with the first final result, or failing
        with :class:`PollTimeout` or ``fetch``'s error. Cancelling it
        cancels the current wait or request.
    """
    return Deferred.fromCoroutine(_poll(clock, fetch, done, retry_after, what, schedule, wait_first))
