"""The one place the global reactor is imported.

Library classes take the reactor (or clock) they use as an argument, typed by
the interface they need; when none is given they ask here, at call time, so
that importing tidehunter_tx never installs a reactor.
"""

from __future__ import annotations

from typing import Any, TypeVar

__all__ = ["global_reactor", "or_global_reactor"]

_R = TypeVar("_R")


def global_reactor() -> Any:
    """The running process's reactor (installing the default one if none is)."""
    from twisted.internet import reactor

    return reactor


def or_global_reactor(reactor: _R | None) -> _R:
    """``reactor`` when given, else the global reactor."""
    return global_reactor() if reactor is None else reactor
