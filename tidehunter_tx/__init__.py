"""tidehunter-tx: HTTP streaming with accurate flow control, built on Twisted.

The public surface; everything else is an implementation detail.
"""

from .counter import Counter, StateCounter
from .framing import Framer, LineFramer, make_framer
from .hunter import AlreadyRunning, HTTPStatusError, Hunter, StreamFailed
from .protocol import Ending, StreamOutcome, StreamProtocol, StreamStats
from .sinks import QueueSink, RecordQueue, Sink

__version__ = "0.1.0"

__all__ = [
    "AlreadyRunning",
    "Counter",
    "Ending",
    "Framer",
    "HTTPStatusError",
    "Hunter",
    "LineFramer",
    "QueueSink",
    "RecordQueue",
    "Sink",
    "StateCounter",
    "StreamFailed",
    "StreamOutcome",
    "StreamProtocol",
    "StreamStats",
    "make_framer",
]
