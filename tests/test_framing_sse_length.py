"""SSE and length-prefixed framers, without a reactor: every split, same records.

The SSE framer is checked against ``reference_sse``, a plain transcription of the
WHATWG "event stream" interpretation that works on the whole stream at once.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import cut, feed_all

from tidehunter_tx.framing import (
    FRAMINGS,
    FramingError,
    LengthFramer,
    SSEEvent,
    SSEFramer,
    make_framer,
)

BOM = b"\xef\xbb\xbf"


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


# -- the SSE reference ---------------------------------------------------------


@dataclass
class Parsed:
    events: list[SSEEvent] = field(default_factory=list)
    last_event_id: bytes | None = None
    retry_ms: int | None = None
    keepalives: int = 0
    skipped: int = 0


def reference_sse(
    stream: bytes, max_record_bytes: int | None = None, last_id: bytes | None = None
) -> Parsed:
    """The spec, line by line, on the whole stream (no chunks, no limits but one)."""
    result = Parsed(last_event_id=last_id)
    if stream.startswith(BOM):
        stream = stream[3:]
    lines = re.split(rb"\r\n|\r|\n", stream)
    lines.pop()  # the bytes after the last line end: an unfinished line
    data, event_type, id_buffer = b"", b"", last_id
    for line in lines:
        if line == b"":
            result.last_event_id = id_buffer
            if data:
                data = data[:-1]
                if max_record_bytes is not None and len(data) > max_record_bytes:
                    result.skipped += 1
                else:
                    result.events.append(
                        SSEEvent(data, event_type or b"message", id_buffer)
                    )
            data, event_type = b"", b""
            continue
        if line.startswith(b":"):
            result.keepalives += 1
            continue
        if b":" in line:
            name, _, value = line.partition(b":")
            if value.startswith(b" "):
                value = value[1:]
        else:
            name, value = line, b""
        if name == b"data":
            data += value + b"\n"
        elif name == b"event":
            event_type = value
        elif name == b"id":
            if b"\0" not in value:
                id_buffer = value
        elif name == b"retry" and value and all(0x30 <= c <= 0x39 for c in value):
            result.retry_ms = int(value)
    return result


def feed_events(framer: SSEFramer, chunks: list[bytes]) -> list[SSEEvent]:
    out: list[SSEEvent] = []
    for chunk in chunks:
        out.extend(framer.feed_events(chunk))
    return out


# -- SSE stream strategies ----------------------------------------------------

# Any bytes but CR and LF (a line's content); ':' and spaces are welcome.
text = st.binary(max_size=12).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
value = st.one_of(
    text,
    st.sampled_from([b"", b" ", b" x", b"a:b", b"0", b"15000", b"1\x002", b"\x00"]),
)
# Known fields (data most often), wrong casings, near misses, a mid-stream BOM.
FIELD_NAMES = [b"data", b"data", b"data", b"id", b"event", b"retry", b"Data"]
FIELD_NAMES += [b"dat", b"x", b"data ", BOM + b"data"]
name = st.sampled_from(FIELD_NAMES)
separator = st.sampled_from([b":", b": ", b":  ", None])
field_line = st.builds(
    lambda n, sep, v: n if sep is None else n + sep + v, name, separator, value
)
comment = st.builds(lambda t: b":" + t, text)
line = st.one_of(field_line, field_line, comment, st.just(b""), st.just(b""))
line_end = st.sampled_from([b"\n", b"\r", b"\r\n"])
sse_stream = st.builds(
    lambda bom, lines, tail: (
        (BOM if bom else b"") + b"".join(content + end for content, end in lines) + tail
    ),
    st.booleans(),
    st.lists(st.tuples(line, line_end), max_size=40),
    st.one_of(st.just(b""), field_line),  # maybe an unfinished last line
)


def check_matches_reference(framer: SSEFramer, got: list[SSEEvent], ref: Parsed):
    assert got == ref.events
    assert framer.last_event_id == ref.last_event_id
    assert framer.retry_ms == ref.retry_ms
    assert framer.keepalives == ref.keepalives
    assert framer.skipped == ref.skipped


# -- SSE properties -----------------------------------------------------------


@settings(max_examples=250, deadline=None)
@given(stream=sse_stream, cuts=st.lists(st.integers(0, 10_000), max_size=20))
def test_sse_any_split_gives_the_reference_events(stream, cuts):
    framer = SSEFramer()
    got = feed_events(framer, cut(stream, cuts))
    check_matches_reference(framer, got, reference_sse(stream))
    whole = SSEFramer()
    assert whole.feed_events(stream) == got


@settings(max_examples=150, deadline=None)
@given(stream=sse_stream)
def test_sse_one_byte_chunks_give_the_reference_events(stream):
    framer = SSEFramer()
    got = feed_events(framer, bytewise(stream))
    check_matches_reference(framer, got, reference_sse(stream))


@settings(max_examples=120, deadline=None)
@given(stream=sse_stream, cuts=st.lists(st.integers(0, 10_000), max_size=20))
def test_sse_feed_returns_the_data_of_each_event(stream, cuts):
    framer = SSEFramer()
    assert feed_all(framer, cut(stream, cuts)) == [
        e.data for e in reference_sse(stream).events
    ]


@settings(max_examples=200, deadline=None)
@given(
    events=st.lists(
        st.lists(st.integers(0, 30), min_size=1, max_size=4), min_size=1, max_size=25
    ),
    limit=st.integers(1, 40),
    cuts=st.lists(st.integers(0, 5_000), max_size=30),
    end=line_end,
    where=st.integers(0, 30),
    tight=st.booleans(),
)
def test_sse_oversize_events_skipped_and_counted_under_any_split(
    events, limit, cuts, end, where, tight
):
    events.insert(where % (len(events) + 1), [limit + 1])  # one is surely too big
    # Each event: data lines of the given sizes, then an id, then a blank line.
    stream = b"".join(
        b"".join(b"data: " + b"%d" % (i % 10) * size + end for size in sizes)
        + b"id: %d" % i
        + end
        + end
        for i, sizes in enumerate(events)
    )
    ref = reference_sse(stream, max_record_bytes=limit)
    framer = SSEFramer(max_record_bytes=limit)
    if tight:
        # Treat lines beyond limit + 10 bytes as overlong (ids here are shorter),
        # to run the never-hold-a-long-line path under every split too.
        framer._line_max = limit + 10
    got: list[SSEEvent] = []
    for chunk in cut(stream, cuts):
        got.extend(framer.feed_events(chunk))
        # None is held beyond the maximum (+ a data line's name).
        assert len(framer._carry) <= limit + 1
        assert len(framer._partial) <= limit + 6 or not framer._partial.startswith(
            b"data"
        )
    check_matches_reference(framer, got, ref)
    assert framer.last_event_id == b"%d" % (len(events) - 1)


@settings(max_examples=120, deadline=None)
@given(first=sse_stream, second=sse_stream, cuts=st.lists(st.integers(0, 10_000)))
def test_sse_close_starts_a_clean_stream_keeping_id_and_retry(first, second, cuts):
    ref1 = reference_sse(first)
    ref2 = reference_sse(second, last_id=ref1.last_event_id)
    framer = SSEFramer()
    got1 = feed_events(framer, cut(first, cuts))
    framer.close()
    got2 = feed_events(framer, cut(second, cuts))
    assert got1 == ref1.events
    assert got2 == ref2.events
    assert framer.last_event_id == ref2.last_event_id
    expected_retry = ref2.retry_ms if ref2.retry_ms is not None else ref1.retry_ms
    assert framer.retry_ms == expected_retry


# -- SSE: the spec's examples and rules ---------------------------------------


def test_sse_spec_example_data_lines_are_joined_with_lf():
    framer = SSEFramer()
    assert framer.feed(b"data: YHOO\ndata: +2\ndata: 10\n\n") == [b"YHOO\n+2\n10"]


def test_sse_spec_example_comments_ids_and_one_space_stripped():
    stream = (
        b": test stream\n\n"
        b"data: first event\nid: 1\n\n"
        b"data:second event\nid\n\n"
        b"data:  third event\n\n"
    )
    framer = SSEFramer()
    assert framer.feed_events(stream) == [
        SSEEvent(b"first event", b"message", b"1"),
        # A bare "id" resets the last event ID to the empty string.
        SSEEvent(b"second event", b"message", b""),
        # Only one leading space is removed.
        SSEEvent(b" third event", b"message", b""),
    ]
    assert framer.keepalives == 1
    assert framer.last_event_id == b""


def test_sse_spec_example_field_data_without_colon_and_unfinished_event():
    framer = SSEFramer()
    # "data" alone is a data field with an empty value; the last event is not
    # followed by a blank line, so it is never dispatched, even at close.
    assert framer.feed(b"data\n\ndata\ndata\n\ndata:") == [b"", b"\n"]
    assert framer.close() == b"data:"
    assert framer.feed(b"\n") == []


def test_sse_spec_example_space_after_colon_is_optional():
    framer = SSEFramer()
    assert framer.feed(b"data:test\n\ndata: test\n\n") == [b"test", b"test"]


def test_sse_event_type_defaults_to_message_and_resets_after_dispatch():
    framer = SSEFramer()
    stream = b"event: add\ndata: 1\n\nevent:\ndata: 2\n\nevent: x\n\ndata: 3\n\n"
    assert [(e.event, e.data) for e in framer.feed_events(stream)] == [
        (b"add", b"1"),
        (b"message", b"2"),
        (b"message", b"3"),  # the event type of a data-less block is dropped
    ]


def test_sse_id_persists_and_is_set_even_by_events_without_data():
    framer = SSEFramer()
    assert framer.last_event_id is None
    events = framer.feed_events(b"id: 7\ndata: a\n\ndata: b\n\nid: 9\n\n")
    assert [e.id for e in events] == [b"7", b"7"]
    assert framer.last_event_id == b"9"  # dispatched without firing anything
    assert framer.feed_events(b"data: c\n\n") == [SSEEvent(b"c", b"message", b"9")]


def test_sse_id_is_applied_only_when_its_event_is_dispatched():
    framer = SSEFramer()
    framer.feed(b"id: 1\ndata: a\n\nid: 2\ndata: b\n")
    assert framer.last_event_id == b"1"
    framer.feed(b"\n")
    assert framer.last_event_id == b"2"


def test_sse_id_containing_nul_is_ignored():
    framer = SSEFramer()
    events = framer.feed_events(b"id: 1\n\nid: 2\x003\ndata: x\n\n")
    assert events == [SSEEvent(b"x", b"message", b"1")]
    assert framer.last_event_id == b"1"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"retry: 3000", 3000),
        (b"retry:0042", 42),
        (b"retry: 3000ms", None),
        (b"retry: -5", None),
        (b"retry: 1.5", None),
        (b"retry:  10", None),  # the second space is part of the value
        (b"retry:", None),
        (b"retry", None),
        (b"retry: \xd9\xa3", None),  # an Arabic-Indic digit is not ASCII
    ],
)
def test_sse_retry_accepts_only_ascii_digits(line, expected):
    framer = SSEFramer()
    assert framer.feed(line + b"\n\n") == []
    assert framer.retry_ms == expected


def test_sse_retry_keeps_the_last_valid_value():
    framer = SSEFramer()
    framer.feed(b"retry: 100\n\nretry: soon\n\n")
    assert framer.retry_ms == 100


def test_sse_unknown_fields_and_other_casings_are_ignored():
    framer = SSEFramer()
    stream = b"Data: no\nDATA\nfoo: bar\ndata : no\ndata: yes\n\n"
    assert framer.feed(stream) == [b"yes"]
    assert framer.keepalives == 0


def test_sse_comments_are_keepalives_never_records():
    framer = SSEFramer()
    assert framer.feed(b":\n: ping\n:data: x\n\n") == []
    assert framer.keepalives == 3


def test_sse_bom_is_skipped_only_at_the_start():
    framer = SSEFramer()
    # A second BOM belongs to the first line's field name: an unknown field.
    assert framer.feed(BOM + BOM + b"data: a\n\ndata: b\n\n") == [b"b"]
    framer = SSEFramer()
    assert framer.feed(b"data: a\n\n" + BOM + b"data: b\n\n") == [b"a"]


@pytest.mark.parametrize("split", [1, 2, 3])
def test_sse_bom_split_across_chunks_is_skipped(split):
    framer = SSEFramer()
    stream = BOM + b"data: a\n\n"
    assert feed_all(framer, [stream[:split], b"", stream[split:]]) == [b"a"]
    framer = SSEFramer()
    assert feed_all(framer, bytewise(stream)) == [b"a"]


def test_sse_partial_bom_is_just_bytes():
    framer = SSEFramer()
    assert feed_all(framer, [b"\xef\xbb", b"data: a\n\n", b"data: b\n\n"]) == [b"b"]


def test_sse_bom_is_skipped_again_after_close():
    framer = SSEFramer()
    assert framer.feed(BOM + b"data: a\n\n") == [b"a"]
    framer.close()
    assert feed_all(framer, [b"\xef", b"\xbb\xbfdata: b\n\n"]) == [b"b"]


def test_sse_cr_then_lf_across_chunks_is_one_line_end():
    framer = SSEFramer()
    assert feed_all(framer, [b"data: a\r", b"\n", b"data: b\r", b"\n\r", b"\n"]) == [
        b"a\nb"
    ]
    # A CR then a CR is two line ends: the second is the blank line.
    framer = SSEFramer()
    assert feed_all(framer, [b"data: a\r", b"\rdata: b\r", b"", b"\r"]) == [b"a", b"b"]


def test_sse_mixed_line_ends():
    framer = SSEFramer()
    assert framer.feed(b"data: a\rdata: b\ndata: c\r\n\r\n") == [b"a\nb\nc"]


def test_sse_data_is_bytes_exactly_as_sent():
    framer = SSEFramer()
    assert framer.feed(b"data: caf\xc3\xa9 \xff\x00\n\n") == [b"caf\xc3\xa9 \xff\x00"]


def test_sse_close_returns_the_unfinished_event_and_keeps_id_and_retry():
    framer = SSEFramer()
    framer.feed(b"retry: 500\nid: 1\ndata: done\n\nid: 2\ndata: half\ndata: way")
    assert framer.close() == b"half\ndata: way"
    assert framer.last_event_id == b"1"  # id 2 was never dispatched
    assert framer.retry_ms == 500
    # The next stream starts clean: the unfinished event and its id are gone.
    assert framer.feed_events(b"data: new\n\n") == [SSEEvent(b"new", b"message", b"1")]
    assert framer.close() == b""


def test_sse_oversize_event_is_skipped_and_the_next_is_intact():
    framer = SSEFramer(max_record_bytes=5)
    stream = b"data: 12345\n\ndata: 123\ndata: 45\n\ndata: abc\ndata: d\n\n"
    assert framer.feed(stream) == [b"12345", b"abc\nd"]
    assert framer.skipped == 1


@pytest.mark.parametrize("end", [b"\n", b"\r", b"\r\n"])
def test_sse_event_of_exactly_max_bytes_is_kept_under_every_split(end):
    stream = b"data: ab" + end + b"data:cd" + end + end + b"data: abcdef" + end + end
    for first in range(len(stream) + 1):
        for second in range(first, len(stream) + 1):
            framer = SSEFramer(max_record_bytes=5)
            chunks = [stream[:first], stream[first:second], stream[second:]]
            assert feed_all(framer, chunks) == [b"ab\ncd"]
            assert framer.skipped == 1


def test_sse_overlong_data_line_is_never_held():
    framer = SSEFramer(max_record_bytes=1000)
    assert framer.feed(b"id: 1\ndata: ") == []
    for _ in range(2000):
        assert framer.feed(b"x" * 512) == []
        assert len(framer._partial) <= 1006
        assert len(framer._carry) <= 1001
    assert framer.feed(b"\ndata: more\n\ndata: ok\n\n") == [b"ok"]
    assert framer.skipped == 1
    assert framer.last_event_id == b"1"


def test_sse_data_spread_over_many_lines_is_never_held_beyond_the_maximum():
    framer = SSEFramer(max_record_bytes=1000)
    for _ in range(2000):
        assert framer.feed(b"data: " + b"y" * 100 + b"\n") == []
        assert len(framer._carry) <= 1001
    assert framer.feed(b"\ndata: ok\n\n") == [b"ok"]
    assert framer.skipped == 1


def test_sse_overlong_comment_is_still_a_keepalive():
    framer = SSEFramer(max_record_bytes=10)
    assert feed_all(framer, [b"data: a\n:", b"z" * 10_000, b"\n\n"]) == [b"a"]
    assert framer.keepalives == 1
    assert framer.skipped == 0
    assert len(framer._partial) == 0


def test_sse_overlong_id_line_skips_its_event_and_is_not_applied():
    framer = SSEFramer(max_record_bytes=10)
    huge = b"id: " + b"9" * 10_000
    # Whole or in pieces, the same outcome.
    rest = b"\ndata: a\n\n"
    for chunks in ([huge + rest], [*cut(huge, [100, 5000]), rest]):
        framer = SSEFramer(max_record_bytes=10)
        framer.feed(b"id: 1\n\n")
        assert feed_all(framer, chunks) == []
        assert framer.skipped == 1
        assert framer.last_event_id == b"1"
        assert framer.feed(b"data: b\n\n") == [b"b"]


def test_sse_huge_event_in_small_pieces_costs_linear_time():
    """16 MiB of data in 512-byte pieces; a quadratic framer would take minutes."""
    size = 16 << 20
    piece = b"x" * 512
    framer = SSEFramer(max_record_bytes=size)
    started = time.process_time()
    framer.feed(b"data: ")
    for _ in range(size // 512):
        framer.feed(piece)
    records = framer.feed(b"\n\n")
    elapsed = time.process_time() - started
    assert [len(r) for r in records] == [size]
    assert elapsed < 10


def test_sse_many_small_events_per_chunk():
    stream = b"".join(b'id: %d\ndata: {"n": %d}\n\n' % (i, i) for i in range(5000))
    framer = SSEFramer()
    got = feed_all(framer, cut(stream, list(range(0, len(stream), 16384))))
    assert got == [b'{"n": %d}' % i for i in range(5000)]
    assert framer.last_event_id == b"4999"


# -- length framing ------------------------------------------------------------


def strip_one_line_end(payload: bytes) -> bytes:
    if payload.endswith(b"\r\n"):
        return payload[:-2]
    if payload.endswith(b"\n"):
        return payload[:-1]
    return payload


length_line_end = st.sampled_from([b"\r\n", b"\n"])
length_item = st.one_of(
    st.tuples(
        st.just("record"),
        st.binary(max_size=50),  # any bytes, newlines included
        st.sampled_from([b"\r\n", b"\r\n", b"\n", b""]),
        st.sampled_from([b"", b" ", b"\t ", b"00"]),  # before the digits
        st.sampled_from([b"", b" ", b"\t"]),  # after the digits
        length_line_end,
    ),
    st.tuples(st.just("keepalive"), length_line_end),
)


def render_length(items) -> tuple[bytes, list[bytes], int]:
    """The stream, the stripped payloads in order, and the blank lines."""
    parts, payloads, blanks = [], [], 0
    for item in items:
        if item[0] == "keepalive":
            parts.append(item[1])
            blanks += 1
            continue
        _, body, term, before, after, eol = item
        payload = body + term
        parts.append(before + b"%d" % len(payload) + after + eol + payload)
        payloads.append(strip_one_line_end(payload))
    return b"".join(parts), payloads, blanks


@settings(max_examples=250, deadline=None)
@given(
    items=st.lists(length_item, max_size=40),
    cuts=st.lists(st.integers(0, 10_000), max_size=30),
)
def test_length_any_split_gives_the_same_records(items, cuts):
    stream, payloads, blanks = render_length(items)
    framer = LengthFramer()
    got = feed_all(framer, cut(stream, cuts))
    assert got == [p for p in payloads if p]
    assert framer.keepalives == blanks + payloads.count(b"")
    assert framer.skipped == 0
    assert framer.close() == b""
    assert LengthFramer().feed(stream) == got


@settings(max_examples=100, deadline=None)
@given(items=st.lists(length_item, max_size=25))
def test_length_one_byte_chunks_give_the_same_records(items):
    stream, payloads, _ = render_length(items)
    assert feed_all(LengthFramer(), bytewise(stream)) == [p for p in payloads if p]


@settings(max_examples=200, deadline=None)
@given(
    items=st.lists(length_item, min_size=1, max_size=40),
    limit=st.integers(1, 30),
    cuts=st.lists(st.integers(0, 5_000), max_size=30),
)
def test_length_oversize_records_skipped_and_counted_under_any_split(
    items, limit, cuts
):
    stream, payloads, _ = render_length(items)
    framer = LengthFramer(max_record_bytes=limit)
    got: list[bytes] = []
    for chunk in cut(stream, cuts):
        got.extend(framer.feed(chunk))
        assert len(framer._payload) <= limit + 2
        assert len(framer._line) <= 21
    assert got == [p for p in payloads if p and len(p) <= limit]
    assert framer.skipped == sum(1 for p in payloads if len(p) > limit)


# Not lengths: JSON where a length belongs, signs and underscores int() would
# take, hex, 21 digits, 30 bytes without a newline, a long run of spaces.
BAD_LENGTH_LINES = [b'{"id": 1}\r\n', b"12a\n", b"-5\n", b"1_000\n", b"+3\n"]
BAD_LENGTH_LINES += [b"0x10\r\n", b"9" * 21 + b"\n", b"x" * 30, b" " * 25 + b"\n"]


@settings(max_examples=120, deadline=None)
@given(
    items=st.lists(length_item, max_size=20),
    garbage=st.sampled_from(BAD_LENGTH_LINES),
    cuts=st.lists(st.integers(0, 5_000), max_size=20),
)
def test_length_bad_line_raises_with_the_records_before_it(items, garbage, cuts):
    stream, payloads, _ = render_length(items)
    framer = LengthFramer()
    got: list[bytes] = []
    with pytest.raises(FramingError) as caught:
        for chunk in cut(stream + garbage + b"5\r\nabc\r\n", cuts):
            got.extend(framer.feed(chunk))
    got.extend(caught.value.records)
    assert got == [p for p in payloads if p]


def test_length_twitter_style_stream():
    framer = LengthFramer()
    stream = b'\r\n19\r\n{"text": "hello"}\r\n\r\n\r\n17\r\n{"text": "bye"}\r\n'
    assert framer.feed(stream) == [b'{"text": "hello"}', b'{"text": "bye"}']
    assert framer.keepalives == 3


def test_length_strips_only_one_line_end():
    framer = LengthFramer()
    assert framer.feed(b"4\nab\r\n4\nab\n\n3\nab\r") == [b"ab", b"ab\n", b"ab\r"]


def test_length_empty_payload_is_a_keepalive():
    framer = LengthFramer()
    assert framer.feed(b"0\n2\n\r\n1\nx") == [b"x"]
    assert framer.keepalives == 2


def test_length_record_of_exactly_max_bytes_is_kept():
    framer = LengthFramer(max_record_bytes=4)
    assert feed_all(framer, [b"6\r\nabcd\r", b"\n7\r\nabcde\r\n2\nok"]) == [
        b"abcd",
        b"ok",
    ]
    assert framer.skipped == 1


def test_length_bad_length_line_is_a_clear_error():
    framer = LengthFramer()
    with pytest.raises(FramingError, match=r"bad length line b'\{\"text\"") as caught:
        framer.feed(b'{"text": "not a length"}\r\n')
    assert isinstance(caught.value, ValueError)
    assert "..." not in str(caught.value)  # short enough to show whole


def test_length_absurdly_long_length_line_fails_before_its_newline():
    framer = LengthFramer()
    framer.feed(b"1" * 21)
    with pytest.raises(FramingError, match="at most 20 bytes"):
        framer.feed(b"1")
    assert len(framer._line) == 0


def test_length_error_excerpt_is_short():
    framer = LengthFramer()
    with pytest.raises(FramingError) as caught:
        framer.feed(b"<html>" + b"x" * 10_000 + b"\n")
    assert len(str(caught.value)) < 200
    assert "..." in str(caught.value)


def test_length_framer_stays_broken_until_close():
    framer = LengthFramer()
    with pytest.raises(FramingError):
        framer.feed(b"oops\n")
    with pytest.raises(FramingError, match="oops"):
        framer.feed(b"3\nabc")
    framer.close()
    assert framer.feed(b"3\nabc") == [b"abc"]


def test_length_close_returns_the_unfinished_tail():
    framer = LengthFramer()
    assert framer.feed(b"3\nab") == []
    assert framer.close() == b"ab"
    assert framer.feed(b"1") == []
    assert framer.close() == b"1"
    assert framer.feed(b"2\nhi") == [b"hi"]


def test_length_huge_length_in_one_byte_pieces_is_counted_down_not_held():
    framer = LengthFramer(max_record_bytes=1000)
    assert framer.feed(b"1000000000000\r\n") == []
    assert framer.skipped == 1
    for _ in range(100_000):
        framer.feed(b"x")
    assert len(framer._payload) == 0
    assert framer._skip == 1_000_000_000_000 - 100_000


def test_length_oversize_payload_in_one_byte_pieces_then_next_record_intact():
    framer = LengthFramer(max_record_bytes=100)
    stream = b"5002\r\n" + b"z" * 5000 + b"\r\n3\r\nabc"
    got = feed_all(framer, bytewise(stream))
    assert got == [b"abc"]
    assert framer.skipped == 1
    assert len(framer._payload) == 0


def test_length_payload_of_16_mib_in_512_byte_pieces_costs_linear_time():
    size = 16 << 20
    piece = b"x" * 512
    framer = LengthFramer(max_record_bytes=size)
    started = time.process_time()
    framer.feed(b"%d\r\n" % (size + 2))
    for _ in range(size // 512):
        framer.feed(piece)
    records = framer.feed(b"\r\n")
    elapsed = time.process_time() - started
    assert [len(r) for r in records] == [size]
    assert elapsed < 10


def test_length_payload_in_one_byte_pieces_is_not_quadratic():
    size = 200_000
    framer = LengthFramer(max_record_bytes=size)
    started = time.process_time()
    framer.feed(b"%d\n" % size)
    records = [r for _ in range(size) for r in framer.feed(b"y")]
    elapsed = time.process_time() - started
    assert [len(r) for r in records] == [size]
    assert elapsed < 5


# -- registry ------------------------------------------------------------------


def test_framings_are_registered_by_name():
    assert set(FRAMINGS) >= {"lines", "sse", "length"}
    assert isinstance(make_framer("sse", 10), SSEFramer)
    assert isinstance(make_framer("length", 10), LengthFramer)
    assert make_framer("sse", 10).max_record_bytes == 10


@pytest.mark.parametrize("cls", [SSEFramer, LengthFramer])
def test_max_record_bytes_must_be_positive(cls):
    with pytest.raises(ValueError, match="max_record_bytes"):
        cls(0)
