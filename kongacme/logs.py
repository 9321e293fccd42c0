"""
Log observers for the daemon: text or flat JSON lines, filtered by level,
rate-limited per kind of line, to stdout or a file that SIGHUP reopens.

The chain, in the order an event walks it (:class:`DaemonLogObserver`):

1. Twisted's "Starting factory …"/"Stopping factory …" lines, one pair per
   outgoing connection (CA, storage), are demoted to debug.
2. The level filter (``logging.level``).
3. :class:`RateLimitingObserver`: a burst of lines of one kind, then one
   "N more like this in the last 10 s" line per window.
4. The output: Twisted's classic text lines or :func:`event_as_json`,
   written to a :class:`LogFile` (or stdout).
"""

from __future__ import annotations

import datetime
import json
import sys
import threading
from collections.abc import Callable, Hashable
from typing import Any, TextIO

import attrs
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import (
    FileLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    PredicateResult,
    formatEvent,
    textFileLogObserver,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from kongacme.errors import ConfigError

LEVELS = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "error": LogLevel.error,
}

#: Twisted's per-connection factory lines (``Factory.doStart``/``doStop``):
#: two for every CA, Vault or Consul request, noise at info.
NOISE_FORMATS = frozenset({"Starting factory {factory!r}", "Stopping factory {factory!r}"})

#: Formats that wrap free text (``twisted.python.log.msg``, captured
#: stdout/stderr): lines of these kinds differ by their text, not their format.
TEXT_FORMATS = frozenset({"{log_text}", "{log_io}"})

#: Keys of a legacy (``twisted.python.log``) event that only restate what
#: the rendered message and the top-level JSON fields already say.
LEGACY_KEYS = frozenset({"message", "isError", "system", "time", "format", "why", "failure", "printed", "logLevel"})

#: The JSON line's own fields; an event field of the same name is kept
#: under ``field_<name>`` instead of overwriting them.
JSON_RESERVED = frozenset({"time", "level", "logger", "message", "traceback"})


# -- rate limiting ------------------------------------------------------------

#: The one kind that new kinds share while ``max_kinds`` are tracked.
OVERFLOW_KIND = ("kongacme.logs", "many kinds")


def _failure_of(event: dict) -> Failure | None:
    failure = event.get("log_failure", event.get("failure"))
    return failure if isinstance(failure, Failure) else None


def event_kind(event: dict) -> Hashable:
    """
    What makes two log events "the same kind of line" for rate limiting:
    namespace, level and format (not the field values: one line per
    connection from hostile clients differs only in those). Free-text
    events (legacy ``log.msg``, captured stdout) add their text, and events
    with a failure add its type and where it was raised, so distinct errors
    are limited separately.

    :param event: a ``twisted.logger`` event.
    """
    level = event.get("log_level")
    fmt = event.get("log_format")
    kind: tuple = (event.get("log_namespace"), getattr(level, "name", level), fmt)
    if fmt in TEXT_FORMATS:
        kind += (str(event.get("log_text", event.get("log_io")))[:200],)
    failure = _failure_of(event)
    if failure is not None:
        where = tuple(failure.frames[-1][1:3]) if failure.frames else ()
        kind += (failure.type.__module__, failure.type.__qualname__, where)
    return kind


@attrs.define(eq=False)
class _Window:
    """One kind's current window: when it began, lines seen, summary timer."""

    event: dict
    started: float
    seen: int = 0
    summary: IDelayedCall | None = None


@implementer(ILogObserver)
@attrs.define(eq=False)
class RateLimitingObserver:
    """
    Passes at most ``burst`` events of one kind (:func:`event_kind`) per
    ``window`` seconds to ``observer``; when a window in which events were
    suppressed ends, passes one summary event instead, with the suppressed
    events' namespace and level: "N more like this in the last 10 s: <their
    format>".

    Events with a true ``log_unlimited`` key always pass: a log call adds
    ``log_unlimited=True`` to lines that other limits already bound and
    that must all be kept (one per order or per certificate change, which
    the order caps bound).

    Events logged from another thread than the one that built the limiter
    (the reactor's) pass unlimited: the summary timer is the reactor's, and
    threads here log rarely (key generation).

    Windows are fixed: the first event of a kind opens one. At most
    ``max_kinds`` kinds are tracked at once; beyond that, new kinds share
    one window, so a flood of distinct failures cannot grow the table.

    :param observer: where passed and summary events go.
    :param clock: schedules the summaries and stamps them.
    :param burst: events of one kind passed per window.
    :param window: seconds.
    :param max_kinds: kinds tracked at once.
    """

    observer: Callable[[dict], None]
    clock: IReactorTime
    burst: int = 5
    window: float = 10.0
    max_kinds: int = 2048
    _windows: dict = attrs.field(factory=dict, init=False)
    _thread: int = attrs.field(factory=threading.get_ident, init=False)

    def __call__(self, event: dict) -> None:
        if event.get("log_unlimited") or threading.get_ident() != self._thread:
            self.observer(event)
            return
        now = self.clock.seconds()
        kind = event_kind(event)
        current = self._windows.get(kind)
        if current is not None and now - current.started >= self.window and current.summary is None:
            del self._windows[kind]
            current = None
        if current is None:
            if len(self._windows) >= self.max_kinds:
                self._prune(now)
            if len(self._windows) >= self.max_kinds:
                kind = OVERFLOW_KIND
                current = self._windows.get(kind)
            if current is None:
                current = self._windows[kind] = _Window(event, now)
        current.seen += 1
        if current.seen <= self.burst:
            self.observer(event)
        elif current.summary is None:
            current.summary = self.clock.callLater(
                max(0.0, current.started + self.window - now), self._summarise, kind
            )

    def _prune(self, now: float) -> None:
        for kind, current in list(self._windows.items()):
            if current.summary is None and now - current.started >= self.window:
                del self._windows[kind]

    def _summarise(self, kind: Hashable) -> None:
        current = self._windows.pop(kind)
        like = current.event
        self.observer(
            {
                "log_format": "{suppressed} more like this in the last {window:g} s: {like}",
                "log_level": like.get("log_level", LogLevel.info),
                "log_namespace": like.get("log_namespace", __name__),
                "log_time": self.clock.seconds(),
                "suppressed": current.seen - self.burst,
                "window": self.window,
                "like": "lines of many kinds" if kind == OVERFLOW_KIND else like.get("log_format") or "",
            }
        )

    def stop(self) -> None:
        """Report the lines suppressed so far now (the daemon is stopping) and forget every window."""
        for kind, current in list(self._windows.items()):
            if current.summary is not None:
                if current.summary.active():
                    current.summary.cancel()
                self._summarise(kind)
        self._windows.clear()


# -- JSON lines -----------------------------------------------------------------


def rfc3339(timestamp: float) -> str:
    """
    ``2026-12-03T15:20:01.123Z``: UTC, milliseconds.

    :param timestamp: seconds since the epoch.
    """
    moment = datetime.datetime.fromtimestamp(timestamp, tz=datetime.timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _json_value(value: Any) -> Any:
    """``value`` if JSON can carry it as it is, else its ``str``."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return str(value)
    return value


def event_as_json(event: dict) -> str:
    """
    One flat JSON object and a newline: ``time`` (RFC 3339, UTC),
    ``level`` (``debug`` … ``critical``), ``logger`` (the namespace),
    ``message`` (rendered), the event's own fields (values JSON cannot carry
    as their ``str``), and ``traceback`` for a failure.

    :param event: a ``twisted.logger`` event.
    """
    level = event.get("log_level", LogLevel.info)
    line: dict[str, Any] = {
        "time": rfc3339(event.get("log_time") or 0.0),
        "level": getattr(level, "name", str(level)),
        "logger": event.get("log_namespace", "-"),
        "message": formatEvent(event),
    }
    legacy = "isError" in event and isinstance(event.get("message"), tuple)
    for key, value in event.items():
        if key.startswith("log_") or (legacy and key in LEGACY_KEYS):
            continue
        line["field_" + key if key in JSON_RESERVED else key] = _json_value(value)
    failure = _failure_of(event)
    if failure is not None and not legacy:
        # A legacy log.err already has the traceback in its rendered text.
        line["traceback"] = failure.getTraceback()
    return json.dumps(line) + "\n"


def json_lines_observer(stream: TextIO) -> ILogObserver:
    """A :class:`FileLogObserver` writing :func:`event_as_json` lines."""
    return FileLogObserver(stream, event_as_json)


# -- the file ---------------------------------------------------------------------


class LogFile:
    """
    A text log file opened for appending that :meth:`reopen` opens again by
    its path: after logrotate moved it, lines go to a new file.

    :param path: the file.
    """

    def __init__(self, path: str):
        self.path = path
        self._stream = self._open()

    def _open(self) -> TextIO:
        return open(self.path, "a", encoding="utf-8", buffering=1)

    def write(self, text: str) -> None:
        """Append ``text``."""
        self._stream.write(text)

    def flush(self) -> None:
        """Flush to the operating system."""
        self._stream.flush()

    def reopen(self) -> None:
        """
        Open the path again and write there from now on. If it cannot be
        opened, raises :class:`OSError` and keeps writing to the old file.
        """
        stream = self._open()
        old, self._stream = self._stream, stream
        old.close()

    def close(self) -> None:
        """Close the file."""
        self._stream.close()


def check_log_file(file: str) -> None:
    """
    Open ``file`` for appending once, as the daemon will at start.

    :param file: ``logging.file``; ``"-"`` (stdout) is always fine.
    :raises ConfigError: naming ``logging.file`` if it cannot be opened.
    """
    if file == "-":
        return
    try:
        open(file, "a", encoding="utf-8").close()
    except OSError as e:
        raise ConfigError([("logging.file", "cannot open %s: %s" % (file, e.strerror or e))]) from None


# -- the daemon's observer -------------------------------------------------------


@implementer(ILogObserver)
class DaemonLogObserver:
    """
    The daemon's log observer: the chain described in this module's
    docstring, reconfigured in place on reload.

    :param clock: for the rate limiter.
    :param level: lowest level written (debug, info, warn, error).
    :param fmt: ``"text"`` or ``"json"``.
    :param file: ``"-"`` for stdout, else a path opened for appending.
    :param stdout: the stream ``"-"`` means (twistd later replaces
        ``sys.stdout`` with a logging file, so it is taken at construction).
    :raises OSError: if ``file`` cannot be opened.
    """

    def __init__(
        self,
        clock: IReactorTime,
        level: str = "info",
        fmt: str = "text",
        file: str = "-",
        stdout: TextIO | None = None,
    ):
        self._stdout = stdout if stdout is not None else sys.stdout
        self.limiter = RateLimitingObserver(self._write, clock)
        self.level = level
        self.format = fmt
        self.file = file
        self._predicate = LogLevelFilterPredicate(defaultLogLevel=LEVELS[level])
        self._stream: LogFile | TextIO = self._open(file)
        self._output = self._formatter(fmt, self._stream)

    def _open(self, file: str) -> LogFile | TextIO:
        return self._stdout if file == "-" else LogFile(file)

    @staticmethod
    def _formatter(fmt: str, stream) -> ILogObserver:
        return json_lines_observer(stream) if fmt == "json" else textFileLogObserver(stream)

    def __call__(self, event: dict) -> None:
        if event.get("log_format") in NOISE_FORMATS:
            event = dict(event, log_level=LogLevel.debug)
        if self._predicate(event) == PredicateResult.no:
            return
        self.limiter(event)

    def _write(self, event: dict) -> None:
        self._output(event)

    def reopen(self) -> None:
        """
        Reopen the log file (nothing for stdout).

        :raises OSError: if it cannot be opened; the old file stays in use.
        """
        if isinstance(self._stream, LogFile):
            self._stream.reopen()

    def reconfigure(self, level: str, fmt: str, file: str) -> None:
        """
        Switch to new settings; rate-limit windows carry over.

        :raises OSError: if a new ``file`` cannot be opened; nothing changes.
        """
        stream = self._stream
        if file != self.file:
            stream = self._open(file)
        if fmt != self.format or stream is not self._stream:
            self._output = self._formatter(fmt, stream)
        old, self._stream = self._stream, stream
        if old is not stream and isinstance(old, LogFile):
            old.close()
        self._predicate = LogLevelFilterPredicate(defaultLogLevel=LEVELS[level])
        self.level, self.format, self.file = level, fmt, file


def make_observer(level: str = "info", fmt: str = "text", file: str = "-", clock: IReactorTime | None = None):
    """
    Build the daemon's log observer.

    :param level: lowest level written (debug, info, warn, error).
    :param fmt: ``"text"`` (Twisted's classic line per event) or ``"json"``
        (one flat object per line, :func:`event_as_json`).
    :param file: ``"-"`` for stdout, else a path opened for appending.
    :param clock: for rate limiting; the global reactor if ``None``.
    :rtype: DaemonLogObserver
    """
    if clock is None:
        from twisted.internet import reactor as clock
    return DaemonLogObserver(clock, level, fmt, file)
