"""tidehunter-tx: HTTP streaming with accurate flow control, built on Twisted.

The public surface; modules whose names start with ``_`` are implementation
details.  Redis lives in :mod:`tidehunter_tx.redis`, AMP control in
:mod:`tidehunter_tx.control`, the status schema in :mod:`tidehunter_tx.status`.
"""

from ._version import __version__
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
from .gate import Ending, IGate, IGateListener, LocalGate
from .hunter import (
    AlreadyRunning,
    ConnectFailed,
    GaveUp,
    HTTPStatusError,
    Hunter,
    StreamFailed,
)
from .hunter_service import HunterService, RunResult
from .protocol import StreamOutcome, StreamProtocol, StreamStats
from .sinks import FileSink, PipeSink, QueueSink, RecordQueue, Sink
from .status import STATUS_FIELDS

__all__ = [
    "STATUS_FIELDS",
    "AlreadyRunning",
    "ConnectFailed",
    "Counter",
    "Ending",
    "FileSink",
    "Framer",
    "FramingError",
    "GaveUp",
    "HTTPStatusError",
    "Hunter",
    "HunterService",
    "IGate",
    "IGateListener",
    "LengthFramer",
    "LineFramer",
    "LocalGate",
    "PipeSink",
    "QueueSink",
    "RecordQueue",
    "RunResult",
    "SSEEvent",
    "SSEFramer",
    "Sink",
    "StateCounter",
    "StreamFailed",
    "StreamOutcome",
    "StreamProtocol",
    "StreamStats",
    "__version__",
    "make_framer",
]
