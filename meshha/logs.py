"""Structured logging (structlog): JSON lines for the daemon (journald keeps them),
readable lines for the CLI. Secrets are never passed to a logger: adapters log the file
a secret came from, never its value."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog


def configure(
    *, json: bool = True, level: int = logging.INFO, stream: TextIO | None = None
) -> None:
    processors: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    processors.append(
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stdout),
        cache_logger_on_first_use=False,
    )
