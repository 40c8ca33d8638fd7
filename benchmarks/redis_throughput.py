"""Records/s into Redis: tidehunter-tx's daemon next to the original and a ceiling.

One run, one private ``redis-server`` (free loopback port, no persistence) and
one precomputed feed (``bench_server.py``, 200-byte JSON lines); repetitions
interleave raw, ceiling, original, ours, ... with ``FLUSHDB`` before each, so
drift on the machine hits every client alike:

- ``raw``: the ceiling's pushes RESP-encoded before the clock starts, written
  to a socket: what redis-server itself takes in, for scale.
- ``ceiling``: redis-py (with hiredis, its fastest setup) pushing the same
  pre-built records, one multi-value ``RPUSH`` of 5,000 per command, waiting
  for each reply; timed from the first push to the last reply.
- ``orig``: tidehunter 1.0.1 + techies 0.2.0 (``Queue`` as ``q``,
  ``StateCounter`` as ``sc``), as the original's users ran it; timed from the
  first ``q.put`` to the last.  Five round trips per record, so it runs over
  ``--orig-records`` only.
- ``ours``: ``twistd -n tidehunter --sink redis://... --counter redis://...``
  exactly as a user runs it; LLEN is polled every millisecond and the clock runs
  from the first record seen in Redis to LLEN == N (records counted in that
  window); the wall time from exec to exit is reported too.
- ``file_memory`` and ``file_redis``: the same daemon with ``--sink file:PATH``,
  once with the in-memory counter (the default) and once with
  ``--counter redis://...``: what a shared Redis counter costs a local sink.
  The file's size is polled every millisecond (the file sink flushes whole
  batches); the clock runs from the first record in the file to N records.
  Reported as a time ratio, Redis counter over memory counter, the median of
  the per-repetition ratios (target: within 1.3x).

Every run must leave exactly N records with ids 0 and N-1 at the ends (and a
Redis counter must have counted N).  The
ceiling and the original run from ``benchmarks/.venv-redis`` (Python 3.11,
redis-py + hiredis, tidehunter 1.0.1, techies 0.2.0), created on first use; this
file is also their client (``--client``), so it imports only the stdlib at the
top.  Needs the project venv with the test extra (``tests/redis_support.py``).

    python benchmarks/redis_throughput.py [--repeat 3] [--records 1000000]
        [--orig-records 20000] [--json PATH]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SERVER = HERE / "bench_server.py"
REDIS_VENV = HERE / ".venv-redis"
REDIS_PYTHON = REDIS_VENV / "bin" / "python"
#: Both packages' setup.py import themselves (so redis/requests must come first).
RECIPE = (
    ("install", "redis[hiredis]", "requests", "setuptools", "wheel"),
    ("install", "--no-build-isolation", "tidehunter==1.0.1", "techies==0.2.0"),
)
HOST = "127.0.0.1"
QUEUE_KEY = "bench_q"
COUNTER_KEY = "bench_sc"
BATCH = 5000
POLL = 0.001
RUN_TIMEOUT = 300.0
FIRST_RECORD_TIMEOUT = 30.0
EXIT_TIMEOUT = 30.0

LABELS = {
    "raw": f"pre-encoded `RPUSH` x{BATCH:,}, raw socket (Redis's own limit)",
    "ceiling": f"redis-py + hiredis `RPUSH` x{BATCH:,} pre-built (ceiling)",
    "orig": "tidehunter 1.0.1 + techies 0.2.0",
    "ours": "tidehunter-tx daemon, `--sink redis://`",
}
#: The file-sink pair: same daemon, same sink, the counter in memory or Redis.
FILE_LABELS = {
    "file_memory": "daemon `--sink file:PATH`, `--counter memory`",
    "file_redis": "daemon `--sink file:PATH`, `--counter redis://...`",
}
#: The Redis counter's run may take at most this many times the memory one's.
FILE_TARGET = 1.3
LINE_BYTES = 201  # bench_server.py: 200-byte records plus b"\n"
Result = dict[str, Any]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def check_ends(
    count: int, wanted: int, first: bytes | None, last: bytes | None
) -> str | None:
    """Why the list is wrong, or None: exact length, ids 0 and N-1 at the ends."""
    if count != wanted:
        return f"LLEN {count}, wanted {wanted}"
    ends = [json.loads(x)["id"] if x else None for x in (first, last)]
    if ends != [0, wanted - 1]:
        return f"ids run {ends[0]}..{ends[1]}, wanted 0..{wanted - 1}"
    return None


# Clients, run in benchmarks/.venv-redis ---------------------------------------


def client_ceiling(url: str, port: int, wanted: int) -> Result:
    """redis-py, multi-value RPUSH of pre-built records, one reply at a time."""
    import redis  # type: ignore[import-not-found,unused-ignore]

    sys.path.insert(0, str(HERE))
    from bench_server import record

    values = [record(n) for n in range(wanted)]
    r = redis.Redis(host=HOST, port=port)
    r.ping()
    start = time.perf_counter()
    for i in range(0, wanted, BATCH):
        r.rpush(QUEUE_KEY, *values[i : i + BATCH])
    seconds = time.perf_counter() - start
    count = r.llen(QUEUE_KEY)
    first, last = r.lindex(QUEUE_KEY, 0), r.lindex(QUEUE_KEY, -1)
    return {
        "records": wanted,
        "seconds": seconds,
        "problem": check_ends(count, wanted, first, last),
        "redis_py": redis.__version__,
        "hiredis": redis.utils.HIREDIS_AVAILABLE and metadata.version("hiredis"),
    }


def client_orig(url: str, port: int, wanted: int) -> Result:
    """tidehunter 1.0.1 with techies' Queue and StateCounter, as its README shows."""
    import techies  # type: ignore[import-not-found,unused-ignore]
    import tidehunter  # type: ignore[import-not-found,unused-ignore]

    times: list[float] = []

    class TimedQueue(techies.Queue):  # type: ignore[misc,unused-ignore]
        def put(self, var: Any, block: bool = True, timeout: Any = None) -> None:
            if not times:
                times.append(time.perf_counter())
            super().put(var, block, timeout)
            times[1:] = [time.perf_counter()]

    q = TimedQueue(key=QUEUE_KEY, host=HOST, port=port)
    sc = techies.StateCounter(key=COUNTER_KEY, host=HOST, port=port)
    hunter = tidehunter.Hunter(url, q=q, sc=sc)
    # Hunter does `if not q: q = Queue()`, and an empty techies Queue is falsy
    # (`__len__` is LLEN), so the README's own Redis example streams into an
    # in-memory Queue.  Put the Redis queue back, as its users meant.
    hunter.q = q
    hunter.tide_on(limit=wanted)
    conn = q.conn
    count = conn.llen(QUEUE_KEY)
    problem = check_ends(
        count, wanted, conn.lindex(QUEUE_KEY, 0), conn.lindex(QUEUE_KEY, -1)
    )
    if problem is None and sc.get_total() != wanted:
        problem = f"StateCounter total {sc.get_total()}, wanted {wanted}"
    if len(times) < 2:
        return {"records": count, "seconds": 0.0, "problem": problem or "no puts"}
    return {"records": count, "seconds": times[1] - times[0], "problem": problem}


def client_raw(url: str, port: int, wanted: int) -> Result:
    """Redis's own limit: the same RPUSHes pre-encoded, sent over a raw socket."""
    sys.path.insert(0, str(HERE))
    from bench_server import record

    rs = load_redis_support()
    values = [record(n) for n in range(wanted)]
    commands = [
        rs.encode_command(["RPUSH", QUEUE_KEY, *values[i : i + BATCH]])
        for i in range(0, wanted, BATCH)
    ]
    with rs.RespClient(port) as client:
        start = time.perf_counter()
        for command in commands:
            client.send_encoded(command)
        seconds = time.perf_counter() - start
        count = client.command("LLEN", QUEUE_KEY)
        first, last = client.pipeline(
            [("LINDEX", QUEUE_KEY, 0), ("LINDEX", QUEUE_KEY, -1)]
        )
    return {
        "records": wanted,
        "seconds": seconds,
        "problem": check_ends(count, wanted, first, last),
    }


CLIENTS: dict[str, Callable[[str, int, int], Result]] = {
    "ceiling": client_ceiling,
    "orig": client_orig,
    "raw": client_raw,
}


# The benchmark itself, in the project venv ------------------------------------


def load_redis_support() -> ModuleType:
    """tests/redis_support.py (RedisServer, RespClient), imported by path."""
    # It imports its sibling tests/support.py, as the tests do.
    sys.path.insert(0, str(ROOT / "tests"))
    spec = importlib.util.spec_from_file_location(
        "redis_support", ROOT / "tests" / "redis_support.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["redis_support"] = module
    spec.loader.exec_module(module)
    return module


def venv_imports(python: Path) -> bool:
    if not python.exists():
        return False
    probe = [str(python), "-c", "import hiredis, redis, techies, tidehunter, requests"]
    return subprocess.run(probe, capture_output=True, check=False).returncode == 0


def ensure_redis_venv() -> tuple[Path | None, str | None]:
    """The clients' interpreter, creating its venv once; else why not."""
    if venv_imports(REDIS_PYTHON):
        return REDIS_PYTHON, None
    base = (
        sys.executable
        if sys.version_info[:2] == (3, 11)
        else shutil.which("python3.11")
    )
    if base is None:
        return None, "no Python 3.11 found (tidehunter 1.0.1 only installs on 3.11)"
    shutil.rmtree(REDIS_VENV, ignore_errors=True)
    steps = [[base, "-m", "venv", str(REDIS_VENV)]]
    steps += [[str(REDIS_PYTHON), "-m", "pip", "-q", *step] for step in RECIPE]
    log(f"setting up redis-py, tidehunter 1.0.1 and techies 0.2.0 in {REDIS_VENV}:")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    for step in steps:
        log(f"  $ {shlex.join(step)}")
        done = subprocess.run(step, stdout=sys.stderr, env=env, check=False)
        if done.returncode != 0:
            return None, f"`{shlex.join(step)}` failed (exit {done.returncode})"
    if not venv_imports(REDIS_PYTHON):
        return None, f"{REDIS_PYTHON} still cannot import redis, techies, tidehunter"
    return REDIS_PYTHON, None


def start_feed(records: int) -> tuple[subprocess.Popen[str], int]:
    """The feed server; its stdin is a pipe so it exits when we do."""
    feed = subprocess.Popen(
        [sys.executable, str(SERVER), "--records", str(records)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert feed.stdout is not None
    line = feed.stdout.readline().strip()
    if not line.isdigit():
        feed.kill()
        raise RuntimeError(f"the feed server did not report a port (got {line!r})")
    return feed, int(line)


def run_client(python: Path, name: str, url: str, port: int, records: int) -> Result:
    """One timed run of ``ceiling`` or ``orig`` in a fresh interpreter."""
    argv = [str(python), str(Path(__file__).resolve()), "--client", name]
    argv += ["--url", url, "--redis-port", str(port), "--records", str(records)]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, env=env, timeout=RUN_TIMEOUT
        )
    except subprocess.TimeoutExpired:
        return {"problem": f"no answer within {RUN_TIMEOUT:.0f} s"}
    try:
        result: Result = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return {"problem": f"exit {done.returncode}: " + " | ".join(tail)}
    return result


def run_ours(rs: ModuleType, redis: Any, url: str, records: int) -> Result:
    """The daemon as a user runs it; the clock reads Redis, not the daemon."""
    bin_dir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory(prefix="th-bench-") as tmp:
        argv = [str(bin_dir / "twistd"), "-n", "--pidfile=", "tidehunter"]
        argv += ["--url", url, "--limit", str(records)]
        argv += ["--sink", redis.url(key=QUEUE_KEY)]
        argv += ["--counter", redis.url(key=COUNTER_KEY)]
        argv += ["--control", f"unix:{tmp}/th.sock:mode=600"]
        log_path = Path(tmp) / "daemon.log"
        with rs.RespClient(redis.port) as client, open(log_path, "wb") as out:
            started = time.perf_counter()
            daemon = subprocess.Popen(
                argv, cwd=tmp, stdout=out, stderr=subprocess.STDOUT
            )
            try:
                result = watch(
                    lambda: int(client.command("LLEN", QUEUE_KEY)),
                    "LLEN",
                    daemon,
                    records,
                    started,
                )
            finally:
                if daemon.poll() is None:
                    daemon.kill()
                    daemon.wait()
            first, last = client.pipeline(
                [("LINDEX", QUEUE_KEY, 0), ("LINDEX", QUEUE_KEY, -1)]
            )
            count = client.command("LLEN", QUEUE_KEY)
            result["counter"] = rs.RedisServer.hgetall(redis, COUNTER_KEY)
        if result.get("problem") is None:
            result["problem"] = check_ends(count, records, first, last)
        finish_daemon_result(result, log_path)
    return result


def run_file(
    rs: ModuleType, redis: Any, url: str, records: int, redis_counter: bool
) -> Result:
    """The daemon into a file, its counter in memory or in Redis."""
    bin_dir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory(prefix="th-bench-") as tmp:
        path = Path(tmp) / "records.jsonl"
        argv = [str(bin_dir / "twistd"), "-n", "--pidfile=", "tidehunter"]
        argv += ["--url", url, "--limit", str(records), "--sink", f"file:{path}"]
        if redis_counter:
            argv += ["--counter", redis.url(key=COUNTER_KEY)]
        argv += ["--control", f"unix:{tmp}/th.sock:mode=600"]
        log_path = Path(tmp) / "daemon.log"

        def in_file() -> int:
            try:
                return path.stat().st_size // LINE_BYTES
            except FileNotFoundError:
                return 0

        with open(log_path, "wb") as out:
            started = time.perf_counter()
            daemon = subprocess.Popen(
                argv, cwd=tmp, stdout=out, stderr=subprocess.STDOUT
            )
            try:
                result = watch(in_file, "records in the file", daemon, records, started)
            finally:
                if daemon.poll() is None:
                    daemon.kill()
                    daemon.wait()
        if result.get("problem") is None:
            result["problem"] = check_file(path, records)
        if redis_counter:
            counter = rs.RedisServer.hgetall(redis, COUNTER_KEY)
            result["counter"] = counter
            # A shared run that reached its limit ends as techies' stop() does:
            # state 0, the count moved into total.
            ended = {"state": "0", "count": "0", "total": str(records)}
            if result["problem"] is None and any(
                counter.get(field) != value for field, value in ended.items()
            ):
                result["problem"] = f"Redis counter {counter}, wanted {ended}"
        finish_daemon_result(result, log_path)
    return result


def check_file(path: Path, wanted: int) -> str | None:
    """Why the file is wrong, or None: N lines, ids 0 and N-1 at the ends."""
    data = path.read_bytes()
    lines = data.count(b"\n")
    if lines != wanted or not data.endswith(b"\n"):
        return f"{lines} lines in the file, wanted {wanted}"
    first = data[: data.index(b"\n")]
    last = data[data.rindex(b"\n", 0, len(data) - 1) + 1 : -1] if wanted > 1 else first
    ends = [json.loads(first)["id"], json.loads(last)["id"]]
    if ends != [0, wanted - 1]:
        return f"ids run {ends[0]}..{ends[1]}, wanted 0..{wanted - 1}"
    return None


def finish_daemon_result(result: Result, log_path: Path) -> None:
    """Add the reconnects the daemon logged; on a problem, the log's tail."""
    text = log_path.read_text(errors="replace")
    found = re.findall(r"(\d+) reconnects", text)
    result["reconnects"] = int(found[-1]) if found else None
    if result.get("problem") is not None:
        tail = text.strip().splitlines()[-3:]
        result["problem"] += " | daemon log: " + " | ".join(tail)


def watch(
    progress: Callable[[], int],
    what: str,
    daemon: subprocess.Popen[bytes],
    records: int,
    started: float,
) -> Result:
    """Poll ``progress`` until N (or the daemon dies); then wait for exit 0."""
    deadline = started + RUN_TIMEOUT
    first_deadline = started + FIRST_RECORD_TIMEOUT
    first_at = last_at = None
    first_len = count = 0
    while count < records:
        count = progress()
        now = time.perf_counter()
        if count and first_at is None:
            first_at, first_len = now, count
        if count >= records:
            last_at = now
            break
        if daemon.poll() is not None:
            return {"problem": f"exited {daemon.returncode} with {what} {count}"}
        if now > deadline or (first_at is None and now > first_deadline):
            return {"problem": f"{what} {count} after {now - started:.0f} s"}
        time.sleep(POLL)
    try:
        code = daemon.wait(timeout=EXIT_TIMEOUT)
    except subprocess.TimeoutExpired:
        return {"problem": f"still running {EXIT_TIMEOUT:.0f} s after {what} reached N"}
    assert first_at is not None and last_at is not None
    return {
        "records": records - first_len,
        "seconds": last_at - first_at,
        "wall_seconds": time.perf_counter() - started,
        "first_batch": first_len,
        "problem": None if code == 0 else f"exit code {code}",
    }


@dataclass
class Runs:
    """Every repetition of one client."""

    client: str
    records: int
    #: records/s of each repetition in order; None where that run failed.
    by_rep: list[float | None] = field(default_factory=list)
    raw: list[Result] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    skipped: str | None = None

    @property
    def rates(self) -> list[float]:
        return [rate for rate in self.by_rep if rate is not None]

    @property
    def median(self) -> float | None:
        return statistics.median(self.rates) if self.rates else None

    def add(self, rep: int, result: Result) -> str:
        """Keep one run's result; say how it went."""
        self.raw.append(result)
        if result.get("problem"):
            self.by_rep.append(None)
            self.failures.append(f"run {rep}: {result['problem']}")
            return f"failed ({result['problem']})"
        self.by_rep.append(result["records"] / result["seconds"])
        return f"{self.rates[-1]:,.0f} records/s"

    def walls(self) -> list[float | None]:
        """Exec-to-exit seconds of each repetition; None where it failed."""
        return [None if x.get("problem") else x.get("wall_seconds") for x in self.raw]


def time_ratios(slow: Runs, fast: Runs) -> tuple[list[float], list[float]]:
    """Per repetition, ``slow``'s time over ``fast``'s: per record in the
    streaming window (``fast``'s rate over ``slow``'s) and exec to exit."""
    window = [
        f / s
        for s, f in zip(slow.by_rep, fast.by_rep, strict=False)
        if s and f is not None
    ]
    wall = [
        s / f
        for s, f in zip(slow.walls(), fast.walls(), strict=False)
        if s is not None and f
    ]
    return window, wall


def file_report(runs: dict[str, Runs]) -> list[str]:
    """The file-sink pair: its table, its time ratios and the target."""
    memory, shared = runs["file_memory"], runs["file_redis"]
    out = [
        "",
        "file sink, counter in memory vs in Redis (same interleaved run); "
        "time ratio = median over repetitions of (Redis counter's time / memory "
        "counter's time) in the same round",
        "",
        "| client | records/run | median records/s | min-max records/s "
        "| median exec-to-exit s | reconnects | time vs memory counter "
        "| exec-to-exit vs memory counter |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    window, wall = time_ratios(shared, memory)
    for name, label in FILE_LABELS.items():
        r = runs[name]
        spread = f"{min(r.rates):,.0f}-{max(r.rates):,.0f}" if r.rates else "failed"
        median = "n/a" if r.median is None else f"{r.median:,.0f}"
        walls = [w for w in r.walls() if w is not None]
        wall_s = f"{statistics.median(walls):.2f}" if walls else "n/a"
        reconnects = ",".join(str(x.get("reconnects")) for x in r.raw) or "n/a"
        if name == "file_memory":
            versus = "1.00x | 1.00x"
        else:
            versus = " | ".join(
                f"{statistics.median(x):.2f}x" if x else "n/a" for x in (window, wall)
            )
        out.append(
            f"| {label} | {r.records:,} | {median} | {spread} | {wall_s} "
            f"| {reconnects} | {versus} |"
        )
    out += [
        "",
        f"target: Redis counter within {FILE_TARGET:g}x of the memory "
        "counter's time (median of per-repetition ratios):",
    ]
    for what, ratios in (
        ("streaming window (first record to N in the file)", window),
        ("exec to exit", wall),
    ):
        if not ratios:
            out.append(f"- {what}: NOT MEASURED (no paired runs)")
            continue
        got = statistics.median(ratios)
        verdict = "HELD" if got <= FILE_TARGET else "MISSED"
        each = ", ".join(f"{x:.2f}x" for x in ratios)
        out.append(f"- {what}: {verdict} ({got:.2f}x; per repetition: {each})")
    return out


def ratio(value: float | None, base: float | None) -> float | None:
    return None if value is None or not base else value / base


def fmt_ratio(value: float | None, base: float | None) -> str:
    r = ratio(value, base)
    if r is None:
        return "n/a"
    return f"{r:.4f}x" if r < 0.01 else f"{r:,.2f}x"


def machine(redis_version: str, client_info: Result) -> dict[str, str]:
    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"

    cpu = platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            names = [x for x in info if x.startswith("model name")]
        if names:
            cpu = names[0].split(":", 1)[1].strip()
    except OSError:
        pass
    return {
        "nproc": str(len(os.sched_getaffinity(0))),
        "cpu": cpu,
        "os": platform.platform(),
        "python": platform.python_version(),
        "redis_server": redis_version,
        "redis_py": str(client_info.get("redis_py", "?")),
        "hiredis": str(client_info.get("hiredis", "?")),
        "twisted": version("twisted"),
        "txredisapi": version("txredisapi"),
    }


def report(runs: dict[str, Runs], info: dict[str, str], args: Any) -> str:
    orig, ceiling = runs["orig"].median, runs["ceiling"].median
    out = [
        f"200-byte records, median of {args.repeat} interleaved runs, "
        "FLUSHDB before each, one private redis-server",
        "",
        "| client | records/run | median records/s | min-max records/s "
        "| vs original | vs ceiling |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, label in LABELS.items():
        r = runs[name]
        if r.rates:
            spread = f"{min(r.rates):,.0f}-{max(r.rates):,.0f}"
        else:
            spread = "skipped" if r.skipped else "failed"
        median = "n/a" if r.median is None else f"{r.median:,.0f}"
        out.append(
            f"| {label} | {r.records:,} | {median} | {spread} "
            f"| {fmt_ratio(r.median, orig)} | {fmt_ratio(r.median, ceiling)} |"
        )
    walls = [x["wall_seconds"] for x in runs["ours"].raw if "wall_seconds" in x]
    if walls:
        out += ["", f"ours, exec to exit: median {statistics.median(walls):.2f} s"]
    ours = runs["ours"].median
    if ours is not None and orig and ceiling:
        out.append(
            f"targets (issue 4): >= 100x original: {ours / orig >= 100} "
            f"({ours / orig:,.0f}x); >= 0.75x ceiling: {ours / ceiling >= 0.75} "
            f"({ours / ceiling:.2f}x)"
        )
    out += file_report(runs)
    out += [
        "",
        f"machine: nproc {info['nproc']}, {info['cpu']}, {info['os']}; "
        f"Python {info['python']}; redis-server {info['redis_server']}; "
        f"redis-py {info['redis_py']}, hiredis {info['hiredis']}; "
        f"twisted {info['twisted']}, "
        f"txredisapi {info['txredisapi']}",
        f"date: {info['date']}",
        f"command: `{args.command}`",
    ]
    for r in runs.values():
        if r.skipped:
            out.append(f"note: {r.client} skipped: {r.skipped}")
        for failure in r.failures:
            out.append(f"{r.client}: failed ({failure})")
    return "\n".join(out)


def benchmark(args: Any) -> int:
    rs = load_redis_support()
    runs = {
        "raw": Runs("raw", args.records),
        "ceiling": Runs("ceiling", args.records),
        "orig": Runs("orig", args.orig_records),
        "ours": Runs("ours", args.records),
        "file_memory": Runs("file_memory", args.records),
        "file_redis": Runs("file_redis", args.records),
    }
    python, why_not = ensure_redis_venv()
    if python is None:
        log(f"the ceiling and the original are unavailable: {why_not}")
        runs["ceiling"].skipped = runs["orig"].skipped = why_not
    log(f"precomputing {max(args.records, args.orig_records):,} records ...")
    feed, feed_port = start_feed(max(args.records, args.orig_records))
    url = f"http://{HOST}:{feed_port}/"
    client_info: Result = {}
    date = time.strftime("%Y-%m-%d %H:%M:%S %z")
    try:
        with rs.RedisServer() as redis:
            version = redis.command("INFO", "server").decode()
            redis_version = version.split("redis_version:")[1].split()[0]
            for rep in range(1, args.repeat + 1):
                for name, r in runs.items():
                    if r.skipped:
                        continue
                    redis.command("FLUSHDB")
                    if name == "ours":
                        result = run_ours(rs, redis, url, r.records)
                    elif name in FILE_LABELS:
                        result = run_file(
                            rs, redis, url, r.records, name == "file_redis"
                        )
                    elif name == "raw":
                        result = run_client(
                            Path(sys.executable), name, url, redis.port, r.records
                        )
                    else:
                        assert python is not None
                        result = run_client(python, name, url, redis.port, r.records)
                        client_info.update(result)
                    log(f"run {rep}/{args.repeat} {name}: {r.add(rep, result)}")
    finally:
        feed.kill()
        feed.wait()
    info = machine(redis_version, client_info)
    info["date"] = date
    print(report(runs, info, args))
    if args.json:
        window, wall = time_ratios(runs["file_redis"], runs["file_memory"])
        numbers = {
            "command": args.command,
            "machine": info,
            "repeat": args.repeat,
            "clients": {
                name: {
                    "label": {**LABELS, **FILE_LABELS}[name],
                    "records_per_run": r.records,
                    "median_records_per_s": r.median,
                    "min_records_per_s": min(r.rates, default=None),
                    "max_records_per_s": max(r.rates, default=None),
                    "vs_original": ratio(r.median, runs["orig"].median),
                    "vs_ceiling": ratio(r.median, runs["ceiling"].median),
                    "skipped": r.skipped,
                    "runs": r.raw,
                }
                for name, r in runs.items()
            },
            "file_sink_redis_vs_memory_counter": {
                "target_max_time_ratio": FILE_TARGET,
                "time_ratio_window": statistics.median(window) if window else None,
                "time_ratio_exec_to_exit": statistics.median(wall) if wall else None,
                "time_ratios_window_by_repetition": window,
                "time_ratios_exec_to_exit_by_repetition": wall,
            },
        }
        args.json.write_text(json.dumps(numbers, indent=2) + "\n")
        log(f"wrote {args.json}")
    return 1 if any(r.failures for r in runs.values()) else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per client")
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--orig-records", type=int, default=20_000)
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    parser.add_argument("--client", choices=sorted(CLIENTS), help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--redis-port", type=int, help=argparse.SUPPRESS)
    if argv is None:
        argv = sys.argv[1:]
    args = parser.parse_args(argv)
    if args.client:
        result = CLIENTS[args.client](args.url, args.redis_port, args.records)
        result["python"] = platform.python_version()
        print(json.dumps(result), flush=True)
        return 0 if result["problem"] is None else 1
    if min(args.repeat, args.records, args.orig_records) < 1:
        parser.error("--repeat, --records and --orig-records must be >= 1")
    args.command = shlex.join([sys.executable, sys.argv[0], *argv])
    return benchmark(args)


if __name__ == "__main__":
    sys.exit(main())
