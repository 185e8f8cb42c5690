"""Structured logs: JSON lines for machines, readable lines on a terminal.

Every line is one event with key-value context (tick id, instance_guid), so
on-call people filter logs instead of reading them.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog

from cdnreq.scrub import printable


def configure(format: str = "auto", level: str = "info", stream: TextIO | None = None) -> None:
    stream = stream or sys.stderr
    if format == "auto":
        format = "console" if stream.isatty() else "json"
    renderer: structlog.typing.Processor
    shown: list[structlog.typing.Processor] = []
    if format == "console":  # JSON escapes control characters; a console line must too
        shown = [_printable]
        renderer = structlog.dev.ConsoleRenderer(colors=stream.isatty())
    else:
        renderer = structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            *shown,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelName(level.upper())
        ),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )


def _printable(_logger: object, _name: str, event: dict) -> dict:
    """String values with their control characters escaped (a guid or a
    master's words holding an escape sequence would repaint the terminal);
    a traceback keeps its line breaks."""
    for key, value in event.items():
        if key != "exception" and isinstance(value, str) and not value.isprintable():
            event[key] = printable(value)
    return event
