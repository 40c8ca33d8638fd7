"""Redis: the shared state counter and the gate, exact limits across hunters.

Layout (techies 0.2.0 compatible): the queue is a list at ``KEY`` (we
``RPUSH``, techies' ``Queue.get()`` pops the head); the state counter is a hash
with ``state`` ("1"/"0"), ``count`` (this run), ``total`` (earlier runs) and
our own ``limit`` and each feed's ``position:FEED``.  Admitting and pushing a
batch is one Lua script, so any number of hunters sharing the counter deliver exactly
``limit`` records, and a push never switches a stopped counter back on.

Modules by job: ``_spec`` (``redis://`` specs), ``_connection`` (the
connection and pre-encoded commands), ``_scripts`` (Lua, EVALSHA),
``_counter`` (the hash), ``_gate`` (admission), ``_spill`` (the spill file).
"""

from ._connection import close_connection, connect
from ._counter import RedisStateCounter, RedisUnavailable
from ._gate import MAX_BATCH, MAX_IN_FLIGHT, RedisGate
from ._spec import RedisSpec, parse_redis_spec, redis_password

__all__ = [
    "MAX_BATCH",
    "MAX_IN_FLIGHT",
    "RedisGate",
    "RedisSpec",
    "RedisStateCounter",
    "RedisUnavailable",
    "close_connection",
    "connect",
    "parse_redis_spec",
    "redis_password",
]
