"""The rejects file of `loyalty ingest --rejects FILE`: each rejected line as it was read, with its reason (NDJSON).

One JSON object a line: {"line", "id", "field", "error", "input"}: `input` is the line's exact text
(without its newline), so `jq -r .input FILE > fixed.jsonl` gives the lines back to correct and ingest
again. A line that is not UTF-8 comes as `input_base64` instead; a line over MAX_LINE_BYTES comes with
its first MAX_LINE_BYTES bytes only, marked `"truncated": true` with its full size in `bytes`.
"""
from __future__ import annotations

import base64
import json
from pathlib import Path

from service.ingest import InputLine, Outcome, OversizedLine


class RejectsFile:
    """Writes rejected lines to a file as they are decided, flushed at once so none is lost if the run stops."""

    def __init__(self, path: Path):
        self.path = path
        self.count = 0
        self._handle = path.open("wb")

    def __call__(self, outcome: Outcome, line: InputLine) -> None:
        """Append one rejected line with its outcome."""
        record: dict[str, object] = {"line": outcome.line, "id": outcome.event_id, "field": outcome.field,
                                     "error": outcome.error}
        record.update(original(line, first=outcome.line == 1))
        try:
            text = json.dumps(record, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:  # an unpaired surrogate in text given in process: escape it, losslessly
            text = json.dumps(record).encode("ascii")
        self._handle.write(text + b"\n")
        self._handle.flush()
        self.count += 1

    def close(self) -> None:
        """Close the file."""
        self._handle.close()

    def __enter__(self) -> RejectsFile:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def original(line: InputLine, first: bool) -> dict[str, object]:
    """The fields carrying a line as it was read: `input` (text) or `input_base64` (bytes that are not UTF-8)."""
    if isinstance(line, OversizedLine):
        return {**_text_or_bytes(line.start, first, cut=True), "truncated": True, "bytes": line.size}
    if isinstance(line, str):
        text = line.removesuffix("\n")
        return {"input": text.removeprefix("\ufeff") if first else text}
    return _text_or_bytes(line.removesuffix(b"\n"), first)


def _text_or_bytes(data: bytes, first: bool, cut: bool = False) -> dict[str, object]:
    if first:
        data = data.removeprefix(b"\xef\xbb\xbf")  # the byte-order mark is the file's, not the line's
    # A line cut at MAX_LINE_BYTES may end inside a character: up to 3 bytes are dropped to keep it text.
    for drop in range(4 if cut else 1):
        try:
            return {"input": data[:len(data) - drop].decode("utf-8")}
        except UnicodeDecodeError:
            continue
    return {"input_base64": _base64(data)}


def _base64(line: bytes) -> str:
    """Bytes as base64 text, to carry a line that is not UTF-8 losslessly in JSON."""
    return base64.b64encode(line).decode("ascii")
