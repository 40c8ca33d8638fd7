"""Throughput and peak memory of tidehunter-tx, side by side with its peers.

One run compares like with like: one precomputed feed server for the whole run
(``bench_server.py``, a separate process), and every timed run of every client
in a fresh interpreter (``bench_clients.py``), interleaved ours, records,
batches, httpx, original, raw treq, ours, ... so drift on the machine hits
every client alike.  The original ``tidehunter==1.0.1`` gets its own Python 3.11
venv, created on first use; httpx comes from the ``bench`` extra.  Reports the
median records/s, the spread, the ratios and the peak RSS.  A ratio is the
median of the per-repetition ratios: repetition i of one client over
repetition i of the other, both from the same interleaved round.

    python benchmarks/throughput.py [--repeat 5] [--records 1000000] [--json PATH]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SERVER = HERE / "bench_server.py"
CLIENT = HERE / "bench_clients.py"
ORIG_VENV = HERE / ".venv-orig"
ORIG_PYTHON = ORIG_VENV / "bin" / "python"

#: Table order and labels; the keys are ``bench_clients.py`` client names.
LABELS = {
    "ours": "tidehunter-tx `Hunter` -> `await h.q.get()`",
    "records": "tidehunter-tx `async for record in h.records()`",
    "batches": "tidehunter-tx `async for batch in h.batches(max_batch=10000)`",
    "httpx": "httpx `AsyncClient().stream()` -> `aiter_lines()` (asyncio)",
    "orig": "tidehunter 1.0.1 -> stdlib `Queue`",
    "treq": "raw treq, count newlines (ceiling)",
}
#: Short names for the targets' lines.
SHORT = {
    "ours": "ours (`await h.q.get()`)",
    "records": "records (`h.records()`)",
    "batches": "batches (`h.batches(max_batch=10000)`)",
    "httpx": "httpx",
    "orig": "original (tidehunter 1.0.1)",
    "treq": "raw treq",
}
#: (client, baseline, minimum ratio): what ``report`` checks and prints.
TARGETS = (
    ("records", "httpx", 1.3),
    ("batches", "httpx", 3.0),
    ("ours", "orig", 3.0),
)
SERVER_START_TIMEOUT = 120.0
RUN_TIMEOUT = 300.0
MIB = 1024


@dataclass
class Runs:
    """Every repetition of one client."""

    client: str
    #: records/s of each repetition in order; None where that run failed.
    by_rep: list[float | None] = field(default_factory=list)
    peak_rss_kib: list[int] = field(default_factory=list)
    start_rss_kib: list[int] = field(default_factory=list)
    raw: list[dict[str, Any]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    skipped: str | None = None

    @property
    def rates(self) -> list[float]:
        return [rate for rate in self.by_rep if rate is not None]

    @property
    def median(self) -> float | None:
        return statistics.median(self.rates) if self.rates else None


def paired_ratios(runs: Runs, base: Runs) -> list[float]:
    """Repetition i of ``runs`` over repetition i of ``base``, where both ran."""
    return [
        value / baseline
        for value, baseline in zip(runs.by_rep, base.by_rep, strict=False)
        if value is not None and baseline
    ]


def paired_ratio(runs: Runs, base: Runs) -> float | None:
    """The median of the per-repetition ratios (not a ratio of medians)."""
    ratios = paired_ratios(runs, base)
    return statistics.median(ratios) if ratios else None


def imports_httpx() -> str | None:
    """None when this interpreter can import httpx; else why not."""
    if importlib.util.find_spec("httpx") is None:
        return "httpx is not installed (pip install -e '.[bench]', or make bench)"
    return None


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def imports_orig(python: Path) -> bool:
    """True when ``python`` can import the original and requests."""
    if not python.exists():
        return False
    probe = subprocess.run(
        [str(python), "-c", "import tidehunter, requests"],
        capture_output=True,
        check=False,
    )
    return probe.returncode == 0


def python311() -> str | None:
    """A Python 3.11: the only version tidehunter 1.0.1 still installs on."""
    if sys.version_info[:2] == (3, 11):
        return sys.executable
    return shutil.which("python3.11")


def ensure_orig_venv() -> tuple[Path | None, str | None]:
    """The original's interpreter, creating its venv once; else why not."""
    if imports_orig(ORIG_PYTHON):
        return ORIG_PYTHON, None
    base = python311()
    if base is None:
        return None, "no Python 3.11 found (tidehunter 1.0.1 only installs on 3.11)"
    pip = str(ORIG_VENV / "bin" / "pip")
    steps = [
        [base, "-m", "venv", str(ORIG_VENV)],
        [pip, "install", "requests", "wheel"],
        [pip, "install", "--no-build-isolation", "tidehunter==1.0.1"],
    ]
    log(f"setting up the original tidehunter 1.0.1 in {ORIG_VENV}:")
    for step in steps:
        log(f"  $ {shlex.join(step)}")
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        done = subprocess.run(step, stdout=sys.stderr, env=env, check=False)
        if done.returncode != 0:
            return None, f"`{shlex.join(step)}` failed (exit {done.returncode})"
    if not imports_orig(ORIG_PYTHON):
        return None, f"{ORIG_PYTHON} still cannot import tidehunter"
    return ORIG_PYTHON, None


def start_server(records: int) -> tuple[subprocess.Popen[str], int]:
    """Start the feed; its stdin is a pipe so it exits when we do."""
    server = subprocess.Popen(
        [sys.executable, str(SERVER), "--records", str(records)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    line = ""
    while not line and time.monotonic() < deadline and server.poll() is None:
        line = server.stdout.readline().strip()
    if not line.isdigit():
        stop_server(server)
        raise RuntimeError(f"the feed server did not report a port (got {line!r})")
    return server, int(line)


def stop_server(server: subprocess.Popen[str]) -> None:
    server.terminate()
    try:
        server.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def run_client(
    python: Path | str, client: str, url: str, records: int
) -> dict[str, Any]:
    """One timed run in a fresh interpreter; its JSON line, or a problem."""
    env = dict(os.environ)
    if client == "orig":
        env.pop("PYTHONPATH", None)  # the original's venv stands alone
    command = [str(python), str(CLIENT), client, url, str(records)]
    try:
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            env=env,
            timeout=RUN_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"problem": f"no answer within {RUN_TIMEOUT:.0f} s"}
    lines = done.stdout.strip().splitlines()
    try:
        result: dict[str, Any] = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        return {"problem": f"exit {done.returncode}: " + " | ".join(tail)}
    return result


def fmt_rate(rate: float | None) -> str:
    return "n/a" if rate is None else f"{rate:,.0f}"


def fmt_ratio(r: float | None) -> str:
    return "n/a" if r is None else f"{r:.2f}x"


def fmt_mib(values: Sequence[int]) -> str:
    return f"{statistics.median(values) / MIB:,.0f}" if values else "n/a"


def nproc() -> int:
    """CPUs this process may run on, as ``nproc`` counts them."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def machine() -> dict[str, str]:
    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            names = [x for x in info if x.startswith("model name")]
        if names:
            cpu = names[0].split(":", 1)[1].strip()
    except OSError:
        pass
    return {
        "nproc": str(nproc()),
        "cpu": cpu,
        "os": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "twisted": version("twisted"),
        "treq": version("treq"),
        "httpx": version("httpx"),
    }


def command_line(args: Sequence[str]) -> str:
    """The command as run, with PYTHONPATH when it was set."""
    argv = shlex.join([sys.executable, sys.argv[0], *args])
    path = os.environ.get("PYTHONPATH")
    return f"PYTHONPATH={shlex.quote(path)} {argv}" if path else argv


def target_lines(runs: dict[str, Runs]) -> list[str]:
    """Each target, whether it held, and the per-repetition ratios behind it."""
    out = ["targets (median of per-repetition ratios):"]
    for name, base, minimum in TARGETS:
        what = f"{SHORT[name]} >= {minimum:g}x {SHORT[base]}"
        ratios = paired_ratios(runs[name], runs[base])
        if not ratios:
            why = runs[base].skipped or runs[name].skipped or "no paired runs"
            out.append(f"- {what}: NOT MEASURED ({why})")
            continue
        got = statistics.median(ratios)
        verdict = "HELD" if got >= minimum else "MISSED"
        each = ", ".join(f"{r:.2f}x" for r in ratios)
        out.append(f"- {what}: {verdict} ({got:.2f}x; per repetition: {each})")
    return out


def report(runs: dict[str, Runs], info: dict[str, str], args: Any) -> str:
    baselines = [runs["httpx"], runs["orig"], runs["treq"]]
    out = [
        f"{args.records:,} records of 200 bytes + `\\n` "
        f"({args.records * 201 / 1e6:,.0f} MB) per run, "
        f"median of {args.repeat} interleaved runs, one process per run; "
        "ratios are the median of per-repetition ratios (same round)",
        "",
        "| client | median records/s | min-max records/s | vs httpx | vs original "
        "| vs raw treq | peak RSS MiB | RSS before run MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, label in LABELS.items():
        r = runs[name]
        spread = (
            f"{min(r.rates):,.0f}-{max(r.rates):,.0f}"
            if r.rates
            else ("skipped" if r.skipped else "all runs failed")
        )
        versus = " | ".join(fmt_ratio(paired_ratio(r, base)) for base in baselines)
        out.append(
            f"| {label} | {fmt_rate(r.median)} | {spread} | {versus} "
            f"| {fmt_mib(r.peak_rss_kib)} | {fmt_mib(r.start_rss_kib)} |"
        )
    out += ["", *target_lines(runs)]
    out += [
        "",
        f"machine: nproc {info['nproc']}, {info['cpu']}, {info['os']}; "
        f"{info['python']}; twisted {info['twisted']}, treq {info['treq']}, "
        f"httpx {info['httpx']}"
        + (
            f"; original on Python {info['orig_python']}"
            if "orig_python" in info
            else ""
        ),
        f"date: {info['date']}",
        f"command: `{args.command}`",
    ]
    for r in runs.values():
        if r.skipped:
            out.append(f"note: {r.client} skipped: {r.skipped}")
        for failure in r.failures:
            out.append(f"FAILED {r.client}: {failure}")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs per client")
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    if argv is None:
        argv = sys.argv[1:]
    args = parser.parse_args(argv)
    args.command = command_line(argv)
    if args.repeat < 1 or args.records < 1:
        parser.error("--repeat and --records must be >= 1")

    runs = {name: Runs(name) for name in LABELS}
    orig_python, why_not = ensure_orig_venv()
    if orig_python is None:
        log(f"the original tidehunter 1.0.1 is unavailable: {why_not}")
        log("reporting the other clients only")
        runs["orig"].skipped = why_not
    runs["httpx"].skipped = imports_httpx()
    if runs["httpx"].skipped:
        log(f"the httpx client is unavailable: {runs['httpx'].skipped}")
    pythons: dict[str, Path | str | None] = {
        name: (orig_python if name == "orig" else sys.executable) for name in LABELS
    }
    pythons["httpx"] = None if runs["httpx"].skipped else sys.executable

    info = machine()
    info["date"] = time.strftime("%Y-%m-%d %H:%M:%S %z")
    log(f"precomputing {args.records:,} records in the feed server ...")
    server, port = start_server(args.records)
    url = f"http://127.0.0.1:{port}/"
    try:
        for rep in range(1, args.repeat + 1):
            for name, python in pythons.items():
                if python is None:
                    continue
                result = run_client(python, name, url, args.records)
                r = runs[name]
                r.raw.append(result)
                if result.get("problem"):
                    r.by_rep.append(None)
                    r.failures.append(f"run {rep}: {result['problem']}")
                    log(f"run {rep}/{args.repeat} {name}: FAILED {result['problem']}")
                    continue
                rate = result["records"] / result["seconds"]
                r.by_rep.append(rate)
                r.peak_rss_kib.append(result["rss_peak_kib"])
                if result.get("rss_start_kib") is not None:
                    r.start_rss_kib.append(result["rss_start_kib"])
                if name == "orig":
                    info["orig_python"] = result.get("python", "?")
                log(
                    f"run {rep}/{args.repeat} {name}: {rate:,.0f} records/s, "
                    f"peak RSS {result['rss_peak_kib'] / MIB:,.0f} MiB"
                )
    finally:
        stop_server(server)

    print(report(runs, info, args))
    if args.json:
        numbers = {
            "command": args.command,
            "machine": info,
            "records": args.records,
            "repeat": args.repeat,
            "clients": {
                name: {
                    "label": LABELS[name],
                    "median_records_per_s": r.median,
                    "min_records_per_s": min(r.rates, default=None),
                    "max_records_per_s": max(r.rates, default=None),
                    "records_per_s_by_repetition": r.by_rep,
                    "vs_httpx": paired_ratio(r, runs["httpx"]),
                    "vs_original": paired_ratio(r, runs["orig"]),
                    "vs_raw_treq": paired_ratio(r, runs["treq"]),
                    "vs_httpx_by_repetition": paired_ratios(r, runs["httpx"]),
                    "vs_original_by_repetition": paired_ratios(r, runs["orig"]),
                    "peak_rss_kib": r.peak_rss_kib,
                    "start_rss_kib": r.start_rss_kib,
                    "skipped": r.skipped,
                    "runs": r.raw,
                }
                for name, r in runs.items()
            },
            "targets": [
                {
                    "client": name,
                    "baseline": base,
                    "minimum": minimum,
                    "ratio": paired_ratio(runs[name], runs[base]),
                    "held": (paired_ratio(runs[name], runs[base]) or 0) >= minimum,
                }
                for name, base, minimum in TARGETS
            ],
        }
        args.json.write_text(json.dumps(numbers, indent=2) + "\n")
        log(f"wrote {args.json}")
    return 1 if any(r.failures for r in runs.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
