"""One record, one line, whatever it holds; --format json is lossless."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_twisted
from support import TWISTD, Daemon, HostileServer

from tidehunter_tx import Hunter
from tidehunter_tx.framing import JsonRecords, LengthFramer, LineFramer, SSEFramer
from tidehunter_tx.sinks import as_lines


def test_json_lines_pass_byte_for_byte() -> None:
    records = [b'{"a": 1}', b'{"b": "x\\ny"}', b"not json, one line"]
    assert as_lines(records) == b"\n".join(records) + b"\n"


def test_a_multi_line_json_record_is_the_same_json_on_one_line() -> None:
    record = b'{\n  "a": [1,\r\n 2],\n  "s": "x\\ny"\n}'
    (line,) = as_lines([b'{"before": 0}', record, b"{}"]).splitlines()[1:2]
    assert json.loads(line) == json.loads(record)


def test_a_multi_line_text_record_is_one_json_string() -> None:
    record = "first line\nsecond line, caf\u00e9\r\nthird".encode() + b"\xff"
    data = as_lines([record, b"next"])
    assert data.count(b"\n") == 2 and b"\r" not in data
    first = json.loads(data.split(b"\n")[0])
    assert first.encode("utf-8", "surrogateescape") == record


def test_json_records_from_an_event_stream_carry_event_and_id() -> None:
    framer = JsonRecords(SSEFramer())
    stream = b"event: update\nid: 7\ndata: one\ndata: two\n\ndata: plain\n\n"
    records = [json.loads(record) for record in framer.feed(stream)]
    assert records == [
        {"event": "update", "id": "7", "data": "one\ntwo"},
        {"id": "7", "data": "plain"},
    ]
    assert framer.position == b"7"


def test_json_records_keep_bytes_that_are_not_utf8() -> None:
    payload = b"\x00\xff\n\xfe"
    framer = JsonRecords(LengthFramer())
    (record,) = framer.feed(b"%d\r\n" % len(payload) + payload)
    assert base64.b64decode(json.loads(record)["data_base64"]) == payload


def test_json_records_count_what_the_framer_counts() -> None:
    framer = JsonRecords(LineFramer(max_record_bytes=4))
    assert framer.feed(b"\n12345678\n{}\n") == [b'{"data": "{}"}']
    assert (framer.keepalives, framer.skipped) == (1, 1)


async def multi_line_events(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n")
    for i in range(5):
        writer.write(b"event: tick\nid: %d\ndata: line one\ndata: line two\n\n" % i)
    await writer.drain()


@pytest.fixture
def event_server() -> Iterator[HostileServer]:
    server = HostileServer(multi_line_events)
    yield server
    server.close()


@pytest_twisted.ensureDeferred
async def test_hunter_delivers_json_records(event_server: HostileServer) -> None:
    h = Hunter(f"{event_server.url}/events", framing="sse", record_format="json")
    await h.tide_on(limit=5)
    got = [json.loads(record) for record in h.q.pending]  # type: ignore[attr-defined]
    assert got == [
        {"event": "tick", "id": str(i), "data": "line one\nline two"} for i in range(5)
    ]


def test_an_unknown_record_format_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="lines, json"):
        Hunter("http://127.0.0.1:1/", record_format="csv")


def test_the_daemon_writes_each_multi_line_event_on_one_line(
    tmp_path: Path, daemons: list[Daemon], event_server: HostileServer
) -> None:
    out = tmp_path / "events.jsonl"
    daemon = Daemon(
        tmp_path,
        "--url",
        f"{event_server.url}/events",
        "--framing",
        "sse",
        "--limit",
        "5",
        "--sink",
        f"file:{out}",
    )
    daemons.append(daemon)
    assert daemon.wait(timeout=20) == 0, daemon.output()
    lines = out.read_bytes().splitlines()
    assert [json.loads(line) for line in lines] == ["line one\nline two"] * 5


def test_the_daemon_with_format_json_writes_event_id_and_data(
    tmp_path: Path, daemons: list[Daemon], event_server: HostileServer
) -> None:
    out = tmp_path / "events.jsonl"
    daemon = Daemon(
        tmp_path,
        "--url",
        f"{event_server.url}/events",
        "--framing",
        "sse",
        "--format",
        "json",
        "--limit",
        "5",
        "--sink",
        f"file:{out}",
    )
    daemons.append(daemon)
    assert daemon.wait(timeout=20) == 0, daemon.output()
    got = [json.loads(line) for line in out.read_bytes().splitlines()]
    assert got == [
        {"event": "tick", "id": str(i), "data": "line one\nline two"} for i in range(5)
    ]


def test_an_unknown_format_is_a_usage_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [*TWISTD, "tidehunter", "--url", "http://127.0.0.1:1/", "--format", "csv"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=30,
    )
    assert result.returncode != 0
    assert "--format must be one of lines, json, not 'csv'" in result.stdout + (
        result.stderr
    )
    assert "Traceback" not in result.stdout + result.stderr
