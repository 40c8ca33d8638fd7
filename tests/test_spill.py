"""The spill file is always a new 0600 file: never a planted link, never appended."""

from __future__ import annotations

import json
import os
import stat

import pytest

from tidehunter_tx.redis import _spill
from tidehunter_tx.redis._spill import write_spill

BATCHES: list[tuple[int | None, list[bytes]]] = [(7, [b"a"]), (None, [b"b", b"c"])]


def records(path: str) -> list[str]:
    with open(path) as spill:
        return [json.loads(line)["data"] for line in spill]


def test_a_planted_symlink_is_never_followed(tmp_path):
    mine = tmp_path / "mine.txt"
    mine.write_text("the test's own file\n")
    spill = tmp_path / "spill.jsonl"
    spill.symlink_to(mine)
    written = write_spill(str(spill), "q", "p", BATCHES)
    assert written == (1, 2, f"{spill}.1")
    assert mine.read_text() == "the test's own file\n"
    assert spill.is_symlink()
    assert records(f"{spill}.1") == ["a", "b", "c"]
    assert stat.S_IMODE(os.lstat(f"{spill}.1").st_mode) == 0o600


def test_a_dangling_symlink_is_not_created_through(tmp_path):
    target = tmp_path / "elsewhere.jsonl"
    spill = tmp_path / "spill.jsonl"
    spill.symlink_to(target)
    assert write_spill(str(spill), "q", "p", BATCHES).path == f"{spill}.1"
    assert not target.exists()


def test_two_spills_never_share_a_file(tmp_path):
    spill = str(tmp_path / "spill.jsonl")
    first = write_spill(spill, "q", "p", BATCHES)
    second = write_spill(spill, "q", "p", [(None, [b"d"])])
    assert (first.path, second.path) == (spill, f"{spill}.1")
    assert records(spill) == ["a", "b", "c"]
    assert records(f"{spill}.1") == ["d"]


def test_nothing_to_spill_creates_nothing(tmp_path):
    spill = tmp_path / "spill.jsonl"
    assert write_spill(str(spill), "q", "p", [(None, [])]) == (0, 0, None)
    assert not spill.exists()


def test_every_name_taken_is_an_error_not_an_append(tmp_path, monkeypatch):
    monkeypatch.setattr(_spill, "MAX_SPILL_NAMES", 3)
    spill = tmp_path / "spill.jsonl"
    for name in (spill, f"{spill}.1", f"{spill}.2"):
        with open(name, "w") as taken:
            taken.write("taken\n")
    with pytest.raises(FileExistsError, match=r"spill\.jsonl\.2 are all taken"):
        write_spill(str(spill), "q", "p", BATCHES)
    assert spill.read_text() == "taken\n"
