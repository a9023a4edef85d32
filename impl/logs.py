"""Structured log lines for the implementation: one JSON object per line, through stdlib logging.

One job: give every component a small ``EventLog`` whose calls look like
``log.info("closed outbound stream", peering_id=pid)`` and turn them into ordinary
``logging`` records under the ``peerkit`` logger hierarchy, carrying the fields in
``record.peerkit_fields``; and provide ``JsonLineFormatter`` / ``configure_logging`` for the CLI.

Line format (``JsonLineFormatter``): ``{"ts": "<UTC ISO-8601>", "level": "info", "logger":
"peerkit.server", "server": "dc1", "msg": "...", <fields>...}``. Keys after ``msg`` are the
event's fields in the order given; values that JSON cannot hold are written with ``str()``.
Tests read ``record.peerkit_fields`` (a dict) with pytest's ``caplog``.

May import: the standard library only.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
from collections.abc import Mapping
from typing import IO, Any

__all__ = ["FIELDS_ATTR", "LOGGER_NAME", "EventLog", "JsonLineFormatter", "configure_logging"]

LOGGER_NAME = "peerkit"
FIELDS_ATTR = "peerkit_fields"


class EventLog:
    """A logger bound to some fields (e.g. the server name); ``bind`` adds more."""

    def __init__(
        self, logger: logging.Logger | str = LOGGER_NAME, fields: Mapping[str, object] | None = None
    ) -> None:
        self.logger = logging.getLogger(logger) if isinstance(logger, str) else logger
        self.fields: dict[str, object] = dict(fields or {})

    def bind(self, **fields: object) -> EventLog:
        return EventLog(self.logger, {**self.fields, **fields})

    def child(self, suffix: str, **fields: object) -> EventLog:
        """The same fields plus ``fields``, logged under ``<logger>.<suffix>``."""
        return EventLog(self.logger.getChild(suffix), {**self.fields, **fields})

    def log(self, level: int, msg: str, **fields: object) -> None:
        if self.logger.isEnabledFor(level):
            self.logger.log(level, msg, extra={FIELDS_ATTR: {**self.fields, **fields}})

    def debug(self, msg: str, **fields: object) -> None:
        self.log(logging.DEBUG, msg, **fields)

    def info(self, msg: str, **fields: object) -> None:
        self.log(logging.INFO, msg, **fields)

    def warning(self, msg: str, **fields: object) -> None:
        self.log(logging.WARNING, msg, **fields)

    def error(self, msg: str, **fields: object) -> None:
        self.log(logging.ERROR, msg, **fields)


def _plain(value: object) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(value)


class JsonLineFormatter(logging.Formatter):
    """Formats a record as one JSON object (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.datetime.fromtimestamp(record.created, tz=datetime.UTC)
        line: dict[str, Any] = {
            "ts": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        fields = getattr(record, FIELDS_ATTR, None)
        if isinstance(fields, Mapping) and "server" in fields:
            line["server"] = _plain(fields["server"])
        line["msg"] = record.getMessage()
        if isinstance(fields, Mapping):
            for key, value in fields.items():
                if key != "server":
                    line[str(key)] = _plain(value)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def configure_logging(level: str | int = "info", stream: IO[str] | None = None) -> None:
    """Send ``peerkit`` log records to ``stream`` (default stderr) as JSON lines."""
    if isinstance(level, str):
        numeric = logging.getLevelName(level.upper())
        if not isinstance(numeric, int):
            raise ValueError(f"unknown log level {level!r}")
        level = numeric
    logger = logging.getLogger(LOGGER_NAME)
    for handler in list(logger.handlers):
        if getattr(handler, "_peerkit", False):
            logger.removeHandler(handler)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonLineFormatter())
    handler._peerkit = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
