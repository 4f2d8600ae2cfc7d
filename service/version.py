"""The one version string: `[project] version` in pyproject.toml, as installed (read at run time)."""
from __future__ import annotations

from functools import cache
from importlib.metadata import PackageNotFoundError, version

DISTRIBUTION = "loyalty-engine"


@cache
def package_version() -> str:
    """The installed loyalty-engine version (editable or wheel); "0+unknown" when run without installing."""
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return "0+unknown"
