"""tidehunter-tx: HTTP streaming with accurate flow control, built on Twisted.

The public surface; everything else is an implementation detail.
"""

from .counter import Counter, StateCounter
from .framing import (
    Framer,
    FramingError,
    LengthFramer,
    LineFramer,
    SSEEvent,
    SSEFramer,
    make_framer,
)
from .hunter import AlreadyRunning, HTTPStatusError, Hunter, StreamFailed
from .protocol import Ending, StreamOutcome, StreamProtocol, StreamStats
from .sinks import QueueSink, RecordQueue, Sink

__version__ = "0.1.0"

__all__ = [
    "AlreadyRunning",
    "Counter",
    "Ending",
    "Framer",
    "FramingError",
    "HTTPStatusError",
    "Hunter",
    "LengthFramer",
    "LineFramer",
    "QueueSink",
    "RecordQueue",
    "SSEEvent",
    "SSEFramer",
    "Sink",
    "StateCounter",
    "StreamFailed",
    "StreamOutcome",
    "StreamProtocol",
    "StreamStats",
    "make_framer",
]
