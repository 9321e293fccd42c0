"""
A worker's log events reach the master's log: the worker writes each event
as one JSON line on its standard output (:class:`LineWriter`), and the
master emits it again with a ``worker`` field (:func:`relay_line`), so that
its observer's level, format, file, rate limit and reopening on SIGHUP
apply to every process's lines alike.

The event's format string travels with it, so the master's rate limiter
sees lines of one kind from a worker as one kind.
"""

from __future__ import annotations

import json
from typing import Any, TextIO

from twisted.logger import ILogObserver, Logger, LogLevel, formatEvent
from twisted.python.failure import Failure
from zope.interface import implementer

from kongacme.logs import LEVELS


@implementer(ILogObserver)
class LineWriter:
    """
    Writes events at or above ``level`` to ``stream``, one JSON line each.

    :ivar level: the lowest level written (``logging.level``).
    """

    def __init__(self, stream: TextIO, level: str = "info"):
        self._stream = stream
        self.level = level

    def __call__(self, event: dict) -> None:
        level = event.get("log_level", LogLevel.info)
        if level < LEVELS.get(self.level, LogLevel.info):
            return
        fields = {
            key: value
            for key, value in event.items()
            if (not key.startswith("log_") or key == "log_unlimited")
            and key not in ("format", "level", "failure", "isError", "message")
        }
        line: dict[str, Any] = {
            "level": level.name,
            "namespace": event.get("log_namespace", "-"),
            "format": event.get("log_format"),
            "text": formatEvent(event),
            "fields": fields,
        }
        failure = event.get("log_failure")
        if isinstance(failure, Failure):
            line["traceback"] = failure.getTraceback()
        try:
            # default=str: a value JSON cannot carry goes as its str.
            self._stream.write(json.dumps(line, default=str) + "\n")
            self._stream.flush()
        except (OSError, ValueError):
            pass  # the master is gone; the worker exits on its own


def relay_line(line: bytes, worker: int, log: Logger | None = None) -> None:
    """
    Log one line a worker wrote: a :class:`LineWriter` line is emitted
    again with its level, namespace, format and fields plus ``worker``;
    anything else (a crash's traceback on stderr) as an error line.
    """
    text = line.decode("utf-8", "replace").rstrip("\r\n")
    if not text:
        return
    try:
        event = json.loads(text)
        level = LogLevel.levelWithName(event["level"])
        fields = dict(event.get("fields") or {})
        namespace = str(event.get("namespace") or "kongacme.workers")
        log_format = event.get("format")
        if not isinstance(log_format, str) or "{log_" in log_format:
            # Legacy (twisted.python.log) lines format from log_ fields,
            # which do not travel: their rendered text does.
            log_format, fields["worker_text"] = "{worker_text}", event.get("text", "")
        if event.get("traceback"):
            log_format += "\n{worker_traceback}"
            fields["worker_traceback"] = event["traceback"]
    except (ValueError, KeyError, TypeError, AttributeError):
        (log or Logger(namespace="kongacme.workers")).error(
            "worker {worker}: {worker_text}", worker=worker, worker_text=text
        )
        return
    fields["worker"] = worker
    (log or Logger(namespace=namespace)).emit(level, log_format, **fields)
