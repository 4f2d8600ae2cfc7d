"""Where logs go, in one of two formats: `text` for people (the default) or `json` for log pipelines.

A command (`log_for_people`) writes one line on stderr per problem. In text, a person never reads a
traceback: a record with one (a line rejected as "internal error (logged)", a rule file whose trial
crashed) shows as one line naming the private file that holds it; in JSON the traceback is the record's
`exception` field. `serve` configures its logging from `uvicorn_log_config`, in every worker process.
Services log under "loyalty.*"; every record emitted while a request is served carries its request id.
"""
from __future__ import annotations

import logging
import os
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from pythonjsonlogger.json import JsonFormatter

from api.request_context import current_request_id

LOGGER = "loyalty"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"


class RequestIdFilter(logging.Filter):
    """Stamps each record with the id of the request being served (`-` outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Add `request_id` to the record; never drops it."""
        if getattr(record, "request_id", None) is None:
            record.request_id = current_request_id() or "-"
        return True


class JsonLines(JsonFormatter):
    """One JSON object per line: timestamp (UTC, ms), level, logger, message, the record's extra fields
    (a request's method, route, status, duration_ms, request_id, api_key_id) and any exception as one field."""

    def __init__(self) -> None:
        super().__init__("{asctime}{levelname}{name}{message}", style="{",
                         rename_fields={"asctime": "timestamp", "levelname": "level", "name": "logger",
                                        "exc_info": "exception", "stack_info": "stack"},
                         # uvicorn adds an ANSI-coloured copy of its message: noise in a pipeline.
                         reserved_attrs=[*logging.LogRecord("", 0, "", 0, "", None, None).__dict__, "message",
                                         "asctime", "color_message", "taskName"])

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802 - logging's name
        """ISO 8601 in UTC to the millisecond, e.g. 2026-06-01T09:00:00.123Z."""
        return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def process_log_record(self, log_data: dict) -> dict:
        """Drop the request id outside a request (text shows `-` there)."""
        if log_data.get("request_id") == "-":
            del log_data["request_id"]
        return log_data


def formatter(fmt: str) -> logging.Formatter:
    """The formatter of log format `fmt` (text or json)."""
    return JsonLines() if fmt == "json" else logging.Formatter(TEXT_FORMAT)


def uvicorn_log_config(fmt: str, level: str = "info") -> dict:
    """A `logging.config.dictConfig` dict for `serve` and each of its worker processes: the root, "loyalty"
    and uvicorn loggers write to stderr in format `fmt`, every record stamped with its request id."""
    handler = {"class": "logging.StreamHandler", "stream": "ext://sys.stderr", "formatter": fmt,
               "filters": ["request_id"]}
    chosen = {"handlers": ["default"], "propagate": False}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": RequestIdFilter}},
        "formatters": {"text": {"format": TEXT_FORMAT}, "json": {"()": JsonLines}},
        "handlers": {"default": handler},
        "root": {"handlers": ["default"], "level": "WARNING"},
        "loggers": {
            LOGGER: {**chosen, "level": level.upper()},
            # `serve --scheduler` gave the jobs' logger a handler of its own: its lines come through this one.
            "loyalty.scheduler": {"handlers": [], "propagate": True},
            "uvicorn": {**chosen, "level": level.upper()},
            "uvicorn.error": {"level": level.upper()},
            "uvicorn.access": {**chosen, "level": level.upper()},
        },
    }


class DetailsFile(logging.Handler):
    """Writes records with their tracebacks to a file created privately (mkstemp) on the first record."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.path: Path | None = None
        self._stream = None
        self.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        """Append the record, creating the file first if this is the first one."""
        if record.exc_info is None and not record.stack_info:
            return  # nothing more to say than the line on stderr
        try:
            if self._stream is None:
                descriptor, name = tempfile.mkstemp(prefix="loyalty-", suffix=".log")
                self.path, self._stream = Path(name), os.fdopen(descriptor, "a", encoding="utf-8")
            self._stream.write(self.format(record) + "\n")
            self._stream.flush()
        except Exception:  # noqa: BLE001 - logging must never stop the command
            self.handleError(record)

    def close(self) -> None:
        """Close the file, if one was written."""
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        super().close()


class _OneLine(logging.Formatter):
    def __init__(self, details: DetailsFile):
        super().__init__()
        self.details = details

    def format(self, record: logging.LogRecord) -> str:
        where = f" (traceback in {self.details.path})" if record.exc_info and self.details.path else ""
        return f"{record.name}: {record.getMessage()}{where}"


def log_for_people(fmt: str = "text") -> None:
    """Send warnings and errors of the "loyalty" loggers to stderr, one line each: in text with their tracebacks
    in a private file that the line names, in JSON with the traceback as a field. Safe to call again (each
    command invocation replaces the handlers)."""
    logger = logging.getLogger(LOGGER)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    to_stderr = logging.StreamHandler(sys.stderr)
    to_stderr.setLevel(logging.WARNING)
    if fmt == "json":
        to_stderr.setFormatter(JsonLines())
    else:
        details = DetailsFile()
        to_stderr.setFormatter(_OneLine(details))
        logger.addHandler(details)  # first: the line on stderr names the file it created
    logger.addHandler(to_stderr)
    logger.propagate = False
