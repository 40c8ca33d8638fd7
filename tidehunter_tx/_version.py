"""The version, written once (pyproject.toml) and read from the installed metadata."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

__all__ = ["USER_AGENT", "__version__"]

try:
    __version__ = version("tidehunter-tx")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

USER_AGENT = f"tidehunter-tx/{__version__} (+https://pypi.org/project/tidehunter-tx/)"
