"""Where a command's log goes: one line on stderr per problem, its details (tracebacks) in a private file.

A person never reads a traceback: a record with one (a line rejected as "internal error (logged)", a rule
file whose trial crashed) shows as one line naming the file that holds it. Services log under "loyalty.*";
`serve` and `scheduler` configure their own logging for operators instead.
"""
from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path

LOGGER = "loyalty"


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


def log_for_people() -> None:
    """Send warnings and errors of the "loyalty" loggers to stderr, one line each, and their tracebacks to a
    private file that the line names. Safe to call again (each command invocation replaces the handlers)."""
    logger = logging.getLogger(LOGGER)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    details = DetailsFile()
    to_stderr = logging.StreamHandler(sys.stderr)
    to_stderr.setLevel(logging.WARNING)
    to_stderr.setFormatter(_OneLine(details))
    logger.addHandler(details)  # first: the line on stderr names the file it created
    logger.addHandler(to_stderr)
    logger.propagate = False
