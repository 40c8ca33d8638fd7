"""The line framer, without a reactor: every split of the same bytes, same records."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import cut, feed_all

from tidehunter_tx.framing import LineFramer, make_framer

# Record payloads: no newline inside; a CR may appear inside but never last,
# since a trailing CR belongs to a CRLF terminator.
payload = st.binary(min_size=1, max_size=40).map(
    lambda b: b.replace(b"\n", b"n").rstrip(b"\r") or b"r"
)
# A stream item: a record with its terminator, or a keep-alive.
item = st.one_of(
    st.tuples(st.just("record"), payload, st.sampled_from([b"\n", b"\r\n"])),
    st.tuples(st.just("keepalive"), st.just(b""), st.sampled_from([b"\n", b"\r\n"])),
)


@settings(max_examples=400, deadline=None)
@given(items=st.lists(item, max_size=60), cuts=st.lists(st.integers(0, 10_000)))
def test_any_split_gives_same_records_in_order(items, cuts):
    data = b"".join(p + t for _, p, t in items)
    expected = [p for kind, p, _ in items if kind == "record"]
    keepalives = sum(1 for kind, _, _ in items if kind == "keepalive")

    framer = LineFramer()
    assert feed_all(framer, cut(data, cuts)) == expected
    assert framer.keepalives == keepalives
    assert framer.skipped == 0
    assert framer.close() == b""


@settings(max_examples=100, deadline=None)
@given(items=st.lists(item, min_size=1, max_size=30))
def test_one_byte_chunks_give_same_records(items):
    data = b"".join(p + t for _, p, t in items)
    expected = [p for kind, p, _ in items if kind == "record"]
    framer = LineFramer()
    assert feed_all(framer, [data[i : i + 1] for i in range(len(data))]) == expected


@settings(max_examples=200, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 30), min_size=1, max_size=30),
    limit=st.integers(1, 20),
    cuts=st.lists(st.integers(0, 2_000)),
    crlf=st.booleans(),
)
def test_oversize_records_skipped_and_counted_under_any_split(sizes, limit, cuts, crlf):
    term = b"\r\n" if crlf else b"\n"
    records = [b"%d" % (i % 10) * size for i, size in enumerate(sizes)]
    data = b"".join(r + term for r in records)
    framer = LineFramer(max_record_bytes=limit)
    got = feed_all(framer, cut(data, cuts))
    assert got == [r for r in records if len(r) <= limit]
    assert framer.skipped == sum(1 for r in records if len(r) > limit)


def test_crlf_split_across_chunks_is_one_terminator():
    framer = LineFramer()
    assert feed_all(framer, [b"a\r", b"\nb\r", b"\n\r", b"\n"]) == [b"a", b"b"]
    assert framer.keepalives == 1


def test_cr_inside_a_record_is_kept():
    framer = LineFramer()
    assert framer.feed(b"a\rb\nc\r\r\n") == [b"a\rb", b"c\r"]


def test_partial_record_at_end_of_stream_is_never_emitted():
    framer = LineFramer()
    assert framer.feed(b'{"id": 1}\n{"id": ') == [b'{"id": 1}']
    assert framer.close() == b'{"id": '
    # After close the framer starts clean (a reconnect reuses it).
    assert framer.feed(b"2}\n") == [b"2}"]


def test_record_of_exactly_max_bytes_is_kept_with_crlf_split():
    framer = LineFramer(max_record_bytes=4)
    assert feed_all(framer, [b"abcd\r", b"\nabcde\r", b"\nok\n"]) == [b"abcd", b"ok"]
    assert framer.skipped == 1


def test_oversize_record_is_never_held_beyond_the_maximum():
    framer = LineFramer(max_record_bytes=1000)
    for _ in range(1000):
        assert framer.feed(b"x" * 512) == []
        assert len(framer._partial) <= 1001
    assert framer.feed(b"tail\nnext\n") == [b"next"]
    assert framer.skipped == 1


def test_huge_line_in_small_pieces_costs_linear_time():
    """64 MiB in 512-byte pieces; a quadratic framer would take minutes."""
    size = 64 << 20
    piece = b"x" * 512
    framer = LineFramer(max_record_bytes=size)
    started = time.process_time()
    for _ in range(size // 512):
        framer.feed(piece)
    records = framer.feed(b"\n")
    elapsed = time.process_time() - started
    assert [len(r) for r in records] == [size]
    # Linear work here is well under a second; quadratic is ~10^5 times more.
    assert elapsed < 20


def test_unknown_framing_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown framing 'xml'"):
        make_framer("xml")


def test_max_record_bytes_must_be_positive():
    with pytest.raises(ValueError, match="max_record_bytes"):
        LineFramer(0)
