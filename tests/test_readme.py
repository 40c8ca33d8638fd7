"""Every fenced block in README.md is run here, or marked as not run and why.

Each block's opening fence is preceded by an HTML comment (invisible on
GitHub, read here):

- ``<!-- example: NAME -->``: run by the test for NAME below (several blocks
  may share a NAME: a daemon and the consumer that reads it, in README order);
- ``<!-- not run: REASON -->``: reported as skipped with REASON (``pytest -rs``);
- a comment naming another module (``<!-- run by tests/test_etcd.py -->``):
  that module runs the block (the module must exist).

A block with neither, or a NAME or block count this module does not know,
fails ``test_every_block_is_run_or_marked``.  The blocks are read from the
README, never copied; the one change made to them is the ports: the README
addresses the emulator as ``127.0.0.1:8080`` and Redis as ``127.0.0.1:6379``
(``redis.example.internal:6379`` for the machines of a shared quota), and the
numbers 8080 and 6379 (and that host name) become the emulator and
redis-server these tests start on free ports.  ``$FEED`` is the emulator's
``/firehose``.  Shell blocks run with ``bash -e``, Python blocks as a script.
"""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from redis_support import RedisServer
from support import BIN, CTL

from tidehunter_tx.control import MIN_SECRET_BYTES, read_secret_file

README = Path(__file__).resolve().parent.parent / "README.md"
MARKER = re.compile(r"<!--\s*(example|not run):\s*(.*?)\s*-->")
ELSEWHERE = re.compile(r"<!--.*?\b(tests/test_\w+\.py)\b.*?-->")

#: Every example NAME in the README and how many blocks it has.
EXAMPLES = {
    "api": 1,
    "redis-gate": 1,
    "daemon": 3,
    "secret": 1,
    "consumer": 1,
    "shared-quota": 1,
    "techies": 2,
    "redis-stream": 2,
}
TIMEOUT = 60.0


@dataclass(frozen=True)
class Block:
    line: int  # of the opening fence
    lang: str
    text: str
    kind: str | None  # "example", "not run" or None (unmarked)
    label: str  # the NAME or the REASON


def readme_blocks() -> list[Block]:
    blocks: list[Block] = []
    lines = README.read_text().splitlines()
    i = 0
    while i < len(lines):
        if not lines[i].startswith("```"):
            i += 1
            continue
        start, lang = i, lines[i][3:].strip()
        body: list[str] = []
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i])
            i += 1
        i += 1  # the closing fence
        before = [line for line in lines[:start] if line.strip()]
        last = before[-1].strip() if before else ""
        marker, elsewhere = MARKER.fullmatch(last), ELSEWHERE.fullmatch(last)
        kind, label = (marker.group(1), marker.group(2)) if marker else (None, "")
        if elsewhere and not marker:
            kind, label = "elsewhere", elsewhere.group(1)
        blocks.append(Block(start + 1, lang, "\n".join(body) + "\n", kind, label))
    return blocks


BLOCKS = readme_blocks()


def example(name: str, feed: str | None = None, redis: int | None = None) -> list[str]:
    """The blocks of example NAME, pointed at our emulator and Redis."""
    texts = [b.text for b in BLOCKS if b.kind == "example" and b.label == name]
    assert len(texts) == EXAMPLES[name], f"README example {name!r} changed shape"
    out = []
    for text in texts:
        if feed is not None:
            text = re.sub(r"\b8080\b", feed.rsplit(":", 1)[1], text)
        if redis is not None:
            text = re.sub(r"\b6379\b", str(redis), text)
            text = text.replace("redis.example.internal", "127.0.0.1")
        out.append(text)
    return out


def test_every_block_is_run_or_marked() -> None:
    unmarked = [f"README.md:{b.line} ```{b.lang}" for b in BLOCKS if b.kind is None]
    assert not unmarked, (
        "README blocks neither run nor marked `<!-- not run: why -->`: "
        + ", ".join(unmarked)
    )
    names: dict[str, int] = {}
    for block in BLOCKS:
        if block.kind == "example":
            names[block.label] = names.get(block.label, 0) + 1
    assert names == EXAMPLES, "README examples and tests/test_readme.py disagree"
    assert all(b.label for b in BLOCKS if b.kind == "not run"), "a reason is needed"
    root = README.parent
    for block in BLOCKS:
        if block.kind == "elsewhere":
            assert (root / block.label).is_file(), (
                f"README.md:{block.line}: no {block.label}"
            )


@pytest.mark.parametrize(
    "block",
    [b for b in BLOCKS if b.kind == "not run"],
    ids=lambda b: f"line{b.line}",
)
def test_not_run(block: Block) -> None:
    pytest.skip(f"README.md:{block.line}: {block.label}")


# -- running blocks


@pytest.fixture(scope="module")
def feed() -> Iterator[str]:
    """The emulator in a process of its own; its base URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tidehunter_tx.firehose", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("listening on "), line
        yield line.split()[-1]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDEHUNTER_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return {**env, **extra}


class Shell:
    """A block running in the background (a daemon's terminal)."""

    def __init__(self, text: str, cwd: Path, name: str, **env: str) -> None:
        cwd.mkdir(parents=True, exist_ok=True)
        self.log = cwd / f"{name}.out"
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(
                ["bash", "-e", "-c", text],
                cwd=cwd,
                env=_env(**env),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait(self, timeout: float = TIMEOUT) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running: {self.output()}") from None

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


@pytest.fixture
def shells() -> Iterator[list[Shell]]:
    started: list[Shell] = []
    yield started
    for shell in started:
        shell.kill()


def start(shells: list[Shell], text: str, cwd: Path, name: str, **env: str) -> Shell:
    shell = Shell(text, cwd, name, **env)
    shells.append(shell)
    return shell


def run(argv: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        argv, cwd=cwd, env=_env(**env), capture_output=True, text=True, timeout=TIMEOUT
    )
    assert done.returncode == 0, f"{argv[:2]} exited {done.returncode}:\n{done.stderr}"
    return done


def bash(text: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return run(["bash", "-e", "-o", "pipefail", "-c", text], cwd, **env)


def python(text: str, cwd: Path, name: str, interpreter: str = sys.executable) -> str:
    script = cwd / name
    script.write_text(text)
    return run([interpreter, str(script)], cwd).stdout


def wait_until_up(daemon: Shell, control: str, cwd: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        assert daemon.process.poll() is None, daemon.output()
        probe = [CTL, "--control", control, "status"]
        if subprocess.run(probe, cwd=cwd, capture_output=True).returncode == 0:
            return
        time.sleep(0.05)
    raise AssertionError(f"the daemon never answered: {daemon.output()}")


def lines_in(path: Path) -> int:
    return len(path.read_bytes().splitlines())


# -- the examples, in README order


def test_api(feed: str, tmp_path: Path) -> None:
    (api,) = example("api", feed)
    out = python(api, tmp_path, "api.py")
    assert out == "100000 records, HTTP 200\n100000 records in batches\n"


def test_redis_gate(feed: str, redis_server: RedisServer, tmp_path: Path) -> None:
    (program,) = example("redis-gate", feed, redis_server.port)
    assert python(program, tmp_path, "gate.py") == "1000 records in demo_q\n"
    assert redis_server.command("LLEN", "demo_q") == 1000


def test_daemon_steered_with_ctl(
    feed: str, tmp_path: Path, shells: list[Shell]
) -> None:
    twistd, watch, commands = example("daemon", feed)
    daemon = start(shells, twistd, tmp_path, "daemon")
    wait_until_up(daemon, "unix:th.sock", tmp_path)
    watching = start(shells, watch, tmp_path, "watch")
    out = bash(commands, tmp_path).stdout.splitlines()
    status, limit, final = json.loads(out[0]), json.loads(out[1]), int(out[-1])
    assert status["state"] == "streaming" and status["limit"] == 1000, status
    assert limit["limit"] == 500, limit
    assert daemon.wait(15) == 0, daemon.output()
    assert 0 < final < 500
    assert lines_in(tmp_path / "tweets.jsonl") == final
    assert watching.wait(15) == 0
    assert "daemon stopped" in watching.output()


def test_secret_file(tmp_path: Path) -> None:
    (make,) = example("secret")
    bash(make, tmp_path)
    secret = tmp_path / "secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert read_secret_file(str(secret), MIN_SECRET_BYTES)  # the daemon takes it


def test_consumer_stops_the_daemon(
    feed: str, tmp_path: Path, shells: list[Shell]
) -> None:
    twistd = example("daemon", feed)[0]  # "The producer is the daemon above"
    (consumer,) = example("consumer")
    daemon = start(shells, twistd, tmp_path, "daemon")
    wait_until_up(daemon, "unix:th.sock", tmp_path)
    out = python(consumer, tmp_path, "consumer.py").splitlines()
    assert out[-1].startswith("final count "), out
    final = int(out[-1].split()[-1])
    assert daemon.wait(15) == 0, daemon.output()
    assert 100 <= final < 1000
    assert lines_in(tmp_path / "tweets.jsonl") == final


def test_two_hunters_share_one_quota(
    feed: str, redis_server: RedisServer, tmp_path: Path, shells: list[Shell]
) -> None:
    (twistd,) = example("shared-quota", feed, redis_server.port)
    # Paced, so the second hunter joins the run before the first has finished it.
    url = f"{feed}/firehose?rate=2000"
    hunters = [start(shells, twistd, tmp_path / n, "hunter", FEED=url) for n in "ab"]
    for hunter in hunters:
        assert hunter.wait(30) == 0, hunter.output()
    assert redis_server.command("LLEN", "demo_q") == 10000
    assert redis_server.hgetall("demo_sc")["total"] == "10000"


def test_techies_consumer_stops_the_daemon(
    feed: str,
    redis_server: RedisServer,
    techies_python: Path,
    tmp_path: Path,
    shells: list[Shell],
) -> None:
    twistd, consumer = example("techies", feed, redis_server.port)
    daemon = start(shells, twistd, tmp_path, "daemon")
    python(consumer, tmp_path, "consumer.py", str(techies_python))
    assert daemon.wait(15) == 0, daemon.output()
    counter = redis_server.hgetall("demo_sc")
    assert counter["state"] == "0" and int(counter["total"]) >= 5000, counter


def test_redis_stream_consumer_group(
    feed: str,
    redis_server: RedisServer,
    techies_python: Path,  # a venv with redis-py
    tmp_path: Path,
) -> None:
    twistd, consumer = example("redis-stream", feed, redis_server.port)
    bash(twistd, tmp_path)
    assert redis_server.command("XLEN", "demo_s") == 5000
    out = python(consumer, tmp_path, "workers.py", str(techies_python))
    assert out == "5000 records handled\n"
    pending = redis_server.command("XPENDING", "demo_s", "workers")
    assert isinstance(pending, list) and pending[0] == 0, pending  # all acked
