"""One timed run of one client against the benchmark feed; one JSON line out.

Run as ``python bench_clients.py CLIENT URL RECORDS`` by ``throughput.py``, one
fresh interpreter per run so clients never share a heap, a reactor or warm
caches.  Only the stdlib is imported at the top: the ``orig`` client runs in a
venv that has ``tidehunter==1.0.1`` and ``requests`` but no Twisted.

Clients:

- ``ours``: ``tidehunter_tx.Hunter``; a consumer coroutine takes every record
  with ``await h.q.get()`` while ``tide_on(limit=N)`` runs.
- ``records``: ``tidehunter_tx.Hunter``; ``run = h.tide_on(limit=N)``, then
  ``async for record in h.records()``, then ``await run``.
- ``batches``: the same with ``async for batch in h.batches(max_batch=10000)``
  (each batch a list of records).
- ``httpx``: what a user would pick instead: ``httpx.AsyncClient().stream("GET",
  url)`` and ``async for line in response.aiter_lines()`` under
  ``asyncio.run``, counting the non-empty lines.
- ``orig``: ``tidehunter.Hunter`` 1.0.1 (requests) into its stdlib ``Queue``;
  ``tide_on(limit=N)``, then ``q.get()`` for every record.
- ``treq``: the ceiling; raw treq with ``unbuffered=True`` and a body protocol
  that only counts newlines.

The line printed has the record count, the seconds, the verdict of the checks
(count == N, first id 0, last id N-1) and the peak RSS of this process.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from typing import Any

Result = dict[str, Any]
#: ``max_batch`` of the ``batches`` client.
BATCH = 10_000


def status_kib(field: str) -> int | None:
    """A ``/proc/self/status`` size in KiB (Linux), or None elsewhere."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def peak_rss_kib() -> int:
    """Peak RSS of this process image.

    ``VmHWM`` first: ``ru_maxrss`` may carry the parent's peak across the
    vfork+exec that started us.
    """
    hwm = status_kib("VmHWM")
    if hwm is not None:
        return hwm
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def check_ends(count: int, wanted: int, first: bytes, last: bytes) -> str | None:
    """Why the run is wrong, or None: exact count, ids 0 and N-1 at the ends."""
    if count != wanted:
        return f"got {count} records, wanted {wanted}"
    if count == 0:
        return None
    first_id = json.loads(first)["id"]
    last_id = json.loads(last)["id"]
    if (first_id, last_id) != (0, wanted - 1):
        return f"ids run {first_id}..{last_id}, wanted 0..{wanted - 1}"
    return None


def run_in_reactor(main: Any, result: Result) -> Result:
    """Run ``main()`` on the Twisted reactor; a crash becomes the result's problem."""
    from twisted.internet import reactor
    from twisted.internet.defer import ensureDeferred

    def run() -> None:
        done = ensureDeferred(main())
        done.addErrback(lambda f: result.update(problem=f.getTraceback()))
        done.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(run)
    reactor.run()
    return result


def run_ours(url: str, wanted: int) -> Result:
    """tidehunter-tx: a concurrent consumer awaiting ``h.q.get()`` per record."""
    from twisted.internet.defer import CancelledError, ensureDeferred

    from tidehunter_tx import Hunter

    result: Result = {}

    async def main() -> None:
        h = Hunter(url)
        got = 0
        first = last = b""
        finished = 0.0

        async def consume() -> None:
            nonlocal got, first, last, finished
            while got < wanted:
                record = await h.q.get()
                got += 1
                if got == 1:
                    first = record
            last = record if got else b""
            finished = time.perf_counter()

        consumer = ensureDeferred(consume())
        result["rss_start_kib"] = status_kib("VmRSS")
        start = time.perf_counter()
        problem = None
        try:
            await h.tide_on(limit=wanted)
        except Exception as error:
            problem = f"tide_on failed: {error!r}"
        if not consumer.called:
            consumer.cancel()  # the stream ended short; the consumer waits forever
        try:
            await consumer
        except CancelledError:
            finished = time.perf_counter()
        problem = problem or check_ends(got, wanted, first, last)
        leftover = len(h.q.pending)
        if problem is None and leftover:
            problem = f"{leftover} records past the limit were queued"
        result.update(records=got, seconds=finished - start, problem=problem)

    return run_in_reactor(main, result)


def run_hunter_iterator(url: str, wanted: int, batched: bool) -> Result:
    """tidehunter-tx: ``h.records()`` (or ``h.batches()``) while the run goes on."""

    from tidehunter_tx import Hunter

    result: Result = {}

    async def main() -> None:
        h = Hunter(url)
        got = 0
        first = last = b""
        result["rss_start_kib"] = status_kib("VmRSS")
        start = time.perf_counter()
        run = h.tide_on(limit=wanted)
        if batched:
            batches = 0
            async for batch in h.batches(max_batch=BATCH):
                if not batch:
                    continue
                if not got:
                    first = batch[0]
                got += len(batch)
                last = batch[-1]
                batches += 1
            result["batches"] = batches
        else:
            async for record in h.records():
                got += 1
                if got == 1:
                    first = record
                last = record
        finished = time.perf_counter()
        problem = None
        try:
            await run
        except Exception as error:
            problem = f"tide_on failed: {error!r}"
        problem = problem or check_ends(got, wanted, first, last)
        leftover = len(h.q.pending)
        if problem is None and leftover:
            problem = f"{leftover} records past the limit were queued"
        result.update(records=got, seconds=finished - start, problem=problem)

    return run_in_reactor(main, result)


def run_records(url: str, wanted: int) -> Result:
    """tidehunter-tx: ``async for record in h.records()``."""
    return run_hunter_iterator(url, wanted, batched=False)


def run_batches(url: str, wanted: int) -> Result:
    """tidehunter-tx: ``async for batch in h.batches(max_batch=10000)``."""
    return run_hunter_iterator(url, wanted, batched=True)


def run_httpx(url: str, wanted: int) -> Result:
    """httpx under asyncio: ``aiter_lines()``, counting the non-empty lines."""
    import asyncio

    import httpx

    async def main() -> Result:
        got = 0
        first = last = ""
        async with httpx.AsyncClient() as client:
            rss_start = status_kib("VmRSS")
            start = time.perf_counter()
            async with client.stream("GET", url) as response:
                status = response.status_code
                async for line in response.aiter_lines():
                    if line:
                        got += 1
                        if got == 1:
                            first = line
                        last = line
            finished = time.perf_counter()
        problem = None if status == 200 else f"HTTP status {status}"
        if problem is None:
            problem = check_ends(got, wanted, first.encode(), last.encode())
        return {
            "records": got,
            "seconds": finished - start,
            "problem": problem,
            "rss_start_kib": rss_start,
            "httpx": httpx.__version__,
        }

    try:
        return asyncio.run(main())
    except Exception as error:
        return {"problem": f"httpx failed: {error!r}"}


def run_orig(url: str, wanted: int) -> Result:
    """tidehunter 1.0.1: fill the stdlib Queue, then take every record out."""
    import tidehunter  # type: ignore[import-untyped,import-not-found,unused-ignore]

    h = tidehunter.Hunter(url)
    rss_start = status_kib("VmRSS")
    start = time.perf_counter()
    h.tide_on(limit=wanted)
    filled = time.perf_counter()
    q = h.q
    queued = q.qsize()
    first = last = b""
    for index in range(queued):
        last = q.get()
        if index == 0:
            first = last
    finished = time.perf_counter()
    return {
        "records": queued,
        "seconds": finished - start,
        "problem": check_ends(queued, wanted, first, last),
        "rss_start_kib": rss_start,
        "tide_on_seconds": filled - start,
    }


def run_treq(url: str, wanted: int) -> Result:
    """The ceiling: treq's body delivery with no framing and no queue."""
    import treq
    from twisted.internet.defer import Deferred
    from twisted.internet.protocol import Protocol
    from twisted.python.failure import Failure
    from twisted.web.client import ResponseDone
    from twisted.web.http import PotentialDataLoss

    class CountNewlines(Protocol):
        def __init__(self) -> None:
            self.newlines = 0
            self.reason: Failure | None = None
            self.done: Deferred[None] = Deferred()

        def dataReceived(self, data: bytes) -> None:
            self.newlines += data.count(b"\n")

        def connectionLost(self, reason: Failure | None = None) -> None:
            # Kept aside: a Deferred fired with a Failure would errback.
            self.reason = reason
            self.done.callback(None)

    result: Result = {}

    async def main() -> None:
        counter = CountNewlines()
        result["rss_start_kib"] = status_kib("VmRSS")
        start = time.perf_counter()
        response = await treq.request("GET", url, unbuffered=True)
        response.deliverBody(counter)
        await counter.done
        finished = time.perf_counter()
        problem = None
        reason = counter.reason
        if reason is None or not isinstance(
            reason.value, (ResponseDone, PotentialDataLoss)
        ):
            problem = f"body ended with {reason and reason.value!r}"
        elif counter.newlines != wanted:
            problem = f"counted {counter.newlines} newlines, wanted {wanted}"
        result.update(
            records=counter.newlines, seconds=finished - start, problem=problem
        )

    return run_in_reactor(main, result)


CLIENTS = {
    "ours": run_ours,
    "records": run_records,
    "batches": run_batches,
    "httpx": run_httpx,
    "orig": run_orig,
    "treq": run_treq,
}


def main() -> int:
    if len(sys.argv) != 4 or sys.argv[1] not in CLIENTS:
        print(f"usage: {sys.argv[0]} {{{','.join(CLIENTS)}}} URL RECORDS")
        return 2
    client, url, wanted = sys.argv[1], sys.argv[2], int(sys.argv[3])
    result = CLIENTS[client](url, wanted)
    result.setdefault("problem", "the client reported nothing")
    result.update(
        client=client,
        rss_peak_kib=peak_rss_kib(),
        python=sys.version.split()[0],
    )
    print(json.dumps(result), flush=True)
    return 0 if result["problem"] is None else 1


if __name__ == "__main__":
    sys.exit(main())
