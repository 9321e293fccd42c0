"""
Log observers for the daemon: text or JSON lines, filtered by level, to
stdout or a file.
"""

from __future__ import annotations

import io
import sys

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    jsonFileLogObserver,
    textFileLogObserver,
)

_LEVELS = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "error": LogLevel.error,
}


def make_observer(level: str = "info", fmt: str = "text", file: str = "-") -> ILogObserver:
    """
    Build the daemon's log observer.

    :param level: lowest level written (debug, info, warn, error).
    :param fmt: ``"text"`` (one human line per event) or ``"json"`` (one
        JSON object per line, Twisted's format: every structured field kept).
    :param file: ``"-"`` for stdout, else a path opened for appending.
    """
    stream: io.TextIOBase
    if file == "-":
        stream = sys.stdout  # type: ignore[assignment]
    else:
        stream = open(file, "a", encoding="utf-8", buffering=1)
    if fmt == "json":
        observer = jsonFileLogObserver(stream, recordSeparator="")
    else:
        observer = textFileLogObserver(stream)
    predicate = LogLevelFilterPredicate(defaultLogLevel=_LEVELS[level])
    return FilteringLogObserver(observer, [predicate])
