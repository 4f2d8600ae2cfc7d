"""Hand-written sample events shipped with the package (NDJSON), used in the README's walkthrough."""
from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def sample_events() -> Path:
    """The shipped sample_events.jsonl."""
    return Path(str(files(__name__) / "sample_events.jsonl"))
