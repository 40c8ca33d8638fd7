"""What a refusing or forgetful Redis does to a real daemon: every record has a fate.

A refusal that can pass (OOM, READONLY) holds the stream and retries; one that
cannot (WRONGTYPE) ends the run with every unconfirmed record in the spill
file; a counter hash that vanishes is a failure, never a stop.
"""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import pytest
from redis_support import RedisServer, hunt, list_ids, wait_until
from support import Daemon

TOTAL = 20_000


def info_field(server: RedisServer, name: str) -> str:
    info = server.command("INFO", "memory")
    assert isinstance(info, bytes)
    for line in info.decode().splitlines():
        if line.startswith(f"{name}:"):
            return line.partition(":")[2].strip()
    raise AssertionError(f"no {name} in INFO")


def closing_counts(output: str) -> dict[str, int]:
    """The numbers of the daemon's closing line, by what they count."""
    line = next(line for line in output.splitlines() if " delivered (limit " in line)
    words = line.split("tidehunter: ", 1)[1].replace(";", ",").replace(":", ",")
    counts: dict[str, int] = {}
    for part in words.split(","):
        number, _, what = part.strip().partition(" ")
        if number.isdigit():
            counts[what.split(" (")[0]] = int(number)
    return counts


def spilled_ids(path: Path) -> list[int]:
    return [json.loads(json.loads(line)["data"])["id"] for line in path.open()]


def redis_run(
    daemons: list[Daemon], workdir: Path, url: str, server: RedisServer, *args: str
) -> Daemon:
    return hunt(
        daemons,
        workdir,
        url,
        "--sink",
        server.url(key="q"),
        "--counter",
        server.url(key="sc"),
        "--spill-file",
        str(workdir / "spill.jsonl"),
        *args,
    )


def test_oom_holds_the_stream_until_consumers_drain_and_nothing_is_lost(
    firehose_process, redis_server, tmp_path, daemons
):
    used = int(info_field(redis_server, "used_memory"))
    redis_server.command("CONFIG", "SET", "maxmemory-policy", "noeviction")
    redis_server.command("CONFIG", "SET", "maxmemory", used + 3_000_000)
    daemon = redis_run(
        daemons,
        tmp_path,
        f"{firehose_process}/firehose?size=200",
        redis_server,
        "--limit",
        str(TOTAL),
    )
    daemon.wait_until_up()
    waiting = daemon.wait_for(lambda s: s["waiting"] is not None, timeout=30)
    assert "OOM" in waiting["waiting"]
    time.sleep(0.5)  # while Redis refuses, nothing more goes in
    held = daemon.status()
    assert held["records"] == waiting["records"] and held["waiting"]
    # Consumers catch up: memory frees, the held batches go in, in order.
    taken: list[bytes] = []
    deadline = time.monotonic() + 60
    while len(taken) < TOTAL and time.monotonic() < deadline:
        items = redis_server.command("LPOP", "q", 1000)
        if isinstance(items, list):
            taken += items  # type: ignore[arg-type]
        else:
            time.sleep(0.01)
    assert daemon.wait(timeout=30) == 0, daemon.output()
    assert [json.loads(item)["id"] for item in taken] == list(range(TOTAL))
    output = daemon.output()
    assert "Redis refused a batch (OOM command not allowed" in output
    assert "Redis accepts batches again" in output
    assert f"{TOTAL} records delivered" in output
    assert not (tmp_path / "spill.jsonl").exists()


def replication(server: RedisServer) -> dict[str, str]:
    info = server.command("INFO", "replication")
    assert isinstance(info, bytes)
    pairs = (line.split(":", 1) for line in info.decode().splitlines() if ":" in line)
    return {name: value.strip() for name, value in pairs}


def test_a_failover_to_read_only_and_back_loses_nothing(
    firehose_process, redis_server, tmp_path, daemons
):
    redis_server.command("CONFIG", "SET", "repl-diskless-sync-delay", 0)
    with RedisServer() as standby:
        standby.command("REPLICAOF", "127.0.0.1", redis_server.port)
        wait_until(lambda: replication(standby).get("master_link_status") == "up")
        daemon = redis_run(
            daemons,
            tmp_path,
            f"{firehose_process}/firehose?size=100&rate=5000",
            redis_server,
            "--limit",
            str(TOTAL),
        )
        wait_until(lambda: (redis_server.command("LLEN", "q") or 0) > 1000)
        # A coordinated failover: the sink's Redis pauses writes until the
        # standby caught up, then turns into its read-only replica.
        redis_server.command("FAILOVER")
        wait_until(lambda: replication(redis_server)["role"] == "slave")
        daemon.wait_until_up()
        waiting = daemon.wait_for(lambda s: s["waiting"] is not None, timeout=30)
        assert "READONLY" in waiting["waiting"]
        time.sleep(0.5)  # the stream stays held while Redis refuses
        assert daemon.status()["waiting"] is not None
        # ... and back: the sink's Redis is the master again, with every record.
        redis_server.command("REPLICAOF", "NO", "ONE")
        assert daemon.wait(timeout=60) == 0, daemon.output()
    assert list_ids(redis_server, "q") == list(range(TOTAL))
    assert redis_server.hgetall("sc")["total"] == str(TOTAL)
    assert not (tmp_path / "spill.jsonl").exists()


def test_a_refusal_no_retry_cures_exits_1_with_every_record_spilled(
    firehose_process, redis_server, tmp_path, daemons
):
    redis_server.command("SET", "q", "not a list")
    daemon = redis_run(
        daemons, tmp_path, f"{firehose_process}/firehose?size=100", redis_server
    )
    assert daemon.wait(timeout=30) == 1, daemon.output()
    output = daemon.output()
    assert "Traceback" not in output
    refusals = [line for line in output.splitlines() if "Redis refused a batch" in line]
    assert len(refusals) == 1 and "WRONGTYPE" in refusals[0], output
    spilled = spilled_ids(tmp_path / "spill.jsonl")
    # Every record read and not confirmed: nothing reached Redis, so all of
    # them, from the first, in order.
    assert spilled == list(range(len(spilled))) and spilled, output
    counts = closing_counts(output)
    assert counts["records delivered"] == 0
    assert counts["records read"] == counts["spilled"] == len(spilled)


def test_a_counter_deleted_mid_run_is_a_failure_not_a_stop(
    firehose_process, redis_server, tmp_path, daemons
):
    daemon = redis_run(
        daemons,
        tmp_path,
        f"{firehose_process}/firehose?size=100&rate=5000",
        redis_server,
    )
    wait_until(lambda: (redis_server.command("LLEN", "q") or 0) > 1000)
    redis_server.command("DEL", "sc")
    assert daemon.wait(timeout=30) == 1, daemon.output()
    output = daemon.output()
    assert "the shared counter 'sc' vanished from Redis mid-run" in output
    assert "same Redis run_id: flushed, evicted or deleted" in output
    pushed = list_ids(redis_server, "q")
    spill = tmp_path / "spill.jsonl"
    spilled = spilled_ids(spill) if spill.exists() else []
    # Pushed, then spilled: one unbroken run of ids, none twice.
    assert pushed + spilled == list(range(len(pushed) + len(spilled)))
    counts = closing_counts(output)
    assert counts["records delivered"] == len(pushed)
    assert counts["spilled"] == len(spilled)
    fates = ("records delivered", "spilled", "dropped after the run ended")
    assert counts["records read"] == sum(counts[fate] for fate in fates)


def test_a_redis_restarted_empty_is_a_failure_that_says_so(
    firehose_process, redis_server, tmp_path, daemons
):
    daemon = redis_run(
        daemons,
        tmp_path,
        f"{firehose_process}/firehose?size=100&rate=5000",
        redis_server,
    )
    wait_until(lambda: (redis_server.command("LLEN", "q") or 0) > 1000)
    redis_server.kill()
    redis_server.restart()  # no persistence: it comes back empty
    assert daemon.wait(timeout=30) == 1, daemon.output()
    assert "Redis restarted: its run_id changed" in daemon.output()


@pytest.mark.parametrize(
    "forget", [("DEL", "sc"), ("FLUSHDB",)], ids=["del", "flushdb"]
)
def test_a_counter_gone_from_under_a_quiet_stream_is_no_stop(
    firehose_process, redis_server, tmp_path, daemons, forget
):
    daemon = redis_run(
        daemons,
        tmp_path,
        f"{firehose_process}/firehose?stall_after=3&keepalive=0.2",
        redis_server,
        "--no-reconnect",
    )
    wait_until(lambda: redis_server.command("LLEN", "q") == 3)
    redis_server.command(*forget)
    # Only the counter's poll can see it: no batch goes while the feed is quiet.
    assert daemon.wait(timeout=10) == 1, daemon.output()
    assert "vanished from Redis mid-run" in daemon.output()


def test_the_count_stop_prints_and_the_log_are_what_redis_holds(
    firehose_process, redis_server, tmp_path, daemons
):
    daemon = redis_run(
        daemons,
        tmp_path,
        f"{firehose_process}/firehose?size=100&rate=20000",
        redis_server,
        "--limit",
        "1000000",
    )
    wait_until(lambda: (redis_server.command("LLEN", "q") or 0) > 5000)
    stopped = daemon.ctl("stop")
    assert stopped.returncode == 0, stopped.stderr
    assert daemon.wait(timeout=30) == 0, daemon.output()
    held = redis_server.command("LLEN", "q")
    assert int(stopped.stdout) == held
    assert closing_counts(daemon.output())["records delivered"] == held


def test_sigterm_while_redis_refuses_spills_the_held_records(
    firehose_process, redis_server, tmp_path, daemons
):
    redis_server.command("CONFIG", "SET", "maxmemory-policy", "noeviction")
    used = int(info_field(redis_server, "used_memory"))
    redis_server.command("CONFIG", "SET", "maxmemory", used + 2_000_000)
    daemon = redis_run(
        daemons, tmp_path, f"{firehose_process}/firehose?size=200", redis_server
    )
    daemon.wait_until_up()
    daemon.wait_for(lambda s: s["waiting"] is not None, timeout=30)
    daemon.terminate()
    assert daemon.wait(timeout=30) == 0, daemon.output()
    pushed = list_ids(redis_server, "q")
    spilled = spilled_ids(tmp_path / "spill.jsonl")
    assert spilled and pushed
    # Held batches were refused, so surely not in Redis: nothing twice.
    assert pushed + spilled == list(range(len(pushed) + len(spilled)))
    entries = [json.loads(line) for line in (tmp_path / "spill.jsonl").open()]
    assert not any(entry["sent"] for entry in entries)


def test_a_symlink_planted_at_the_spill_path_is_not_followed(
    firehose_process, redis_server, tmp_path, daemons
):
    mine = tmp_path / "mine.txt"
    mine.write_text("the test's own file\n")
    (tmp_path / "spill.jsonl").symlink_to(mine)
    redis_server.command("CONFIG", "SET", "maxmemory-policy", "noeviction")
    used = int(info_field(redis_server, "used_memory"))
    redis_server.command("CONFIG", "SET", "maxmemory", used + 2_000_000)
    daemon = redis_run(
        daemons, tmp_path, f"{firehose_process}/firehose?size=200", redis_server
    )
    daemon.wait_until_up()
    daemon.wait_for(lambda s: s["waiting"] is not None, timeout=30)
    daemon.terminate()
    assert daemon.wait(timeout=30) == 0, daemon.output()
    assert mine.read_text() == "the test's own file\n"
    fresh = tmp_path / "spill.jsonl.1"
    assert stat.S_IMODE(os.lstat(fresh).st_mode) == 0o600
    spilled = spilled_ids(fresh)
    pushed = list_ids(redis_server, "q")
    assert spilled and pushed + spilled == list(range(len(pushed) + len(spilled)))
    assert f"they are in {fresh} (JSON lines)" in daemon.output()
