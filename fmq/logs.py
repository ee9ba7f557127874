"""
fmq's log: one line per event on stdout, as text or JSON, from a level up.
"""

from __future__ import annotations

import json
import sys
from typing import IO, Any

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    formatTime,
    textFileLogObserver,
)
from zope.interface import provider

_debug = False


def debugging() -> bool:
    """
    Whether debug events are wanted. Hot paths ask before building an event:
    an event filtered out still costs several microseconds to emit.
    """
    return _debug


def make_observer(level: str = "info", format: str = "text", out: IO[str] | None = None):
    """
    The observer for fmq's log, and the switch for L{debugging}.

    @param level: the lowest level written: debug, info, warn, error, critical.
    @param format: C{text} (twistd's lines) or C{json} (one object per line).
    """
    global _debug
    min_level = LogLevel.levelWithName(level)
    _debug = min_level <= LogLevel.debug
    out = out if out is not None else sys.stdout
    observer = textFileLogObserver(out) if format == "text" else json_observer(out)
    return FilteringLogObserver(observer, [LogLevelFilterPredicate(defaultLogLevel=min_level)])


def json_observer(out: IO[str]) -> ILogObserver:
    """
    One JSON object per line: time, level, namespace, the formatted message,
    and the event's own fields that JSON can carry.
    """

    @provider(ILogObserver)
    def observe(event: dict[str, Any]) -> None:
        record: dict[str, Any] = {
            "time": formatTime(event.get("log_time")),
            "level": event["log_level"].name if "log_level" in event else "info",
            "namespace": event.get("log_namespace", "-"),
            "message": formatEvent(event),
        }
        for key, value in event.items():
            if not key.startswith("log_") and key not in record and _plain(value):
                record[key] = value
        if "log_failure" in event:
            record["traceback"] = event["log_failure"].getTraceback()
        out.write(json.dumps(record, default=str) + "\n")
        out.flush()

    return observe


def _plain(value: object) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))
