"""Redis spec strings: what users type into --sink and --counter."""

from __future__ import annotations

import re

import pytest
from test_daemon import twistd

from tidehunter_tx.redis import RedisSpec, parse_redis_spec


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (
            "redis://127.0.0.1:6379/0?key=demo_q",
            RedisSpec("127.0.0.1", 6379, 0, "demo_q"),
        ),
        ("redis://h/3?key=k", RedisSpec("h", 6379, 3, "k")),
        (
            "redis://:p%40ss@h:7000/1?key=k",
            RedisSpec("h", 7000, 1, "k", password="p@ss"),
        ),
        (
            "redis+stream://h:7000/0?key=s&maxlen=1000",
            RedisSpec("h", 7000, 0, "s", stream=True, maxlen=1000),
        ),
    ],
)
def test_good_specs_parse(spec, expected):
    assert parse_redis_spec(spec) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("redis://host:notaport/0?key=k", "port must be a number"),
        ("redis://host:6379/0", "needs ?key=KEY"),
        ("redis://host:6379/0?key=", "needs ?key=KEY"),
        ("redis://host:6379/zero?key=k", "database must be a number"),
        ("redis://host/0?key=k&maxlen=5", "maxlen applies to redis+stream"),
        ("redis+stream://host/0?key=k&maxlen=-1", "maxlen must be a positive"),
        ("redis://host/0?key=k&kye=x", "unknown option 'kye'"),
    ],
)
def test_bad_specs_say_what_is_wrong(spec, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_redis_spec(spec)


def test_public_form_never_shows_the_password():
    spec = parse_redis_spec("redis://:hunter2@h:1/0?key=k")
    assert "hunter2" not in spec.public


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--sink", "redis://host:notaport/0?key=q"], "port must be a number"),
        (["--sink", "redis://127.0.0.1:6379/0"], "needs ?key=KEY"),
        (["--counter", "redis://127.0.0.1:6379/0"], "needs ?key=KEY"),
        (["--counter", "postgres://x"], "--counter: unknown counter"),
        (
            [
                "--sink",
                "redis://127.0.0.1:6379/0?key=q",
                "--counter",
                "redis://127.0.0.1:6379/1?key=sc",
            ],
            "same Redis server and database",
        ),
    ],
)
def test_bad_redis_options_are_usage_errors(args, message):
    result = twistd("tidehunter", "--url", "http://127.0.0.1:9/", *args)
    assert result.returncode != 0
    assert message in result.stderr + result.stdout


def test_usage_error_never_echoes_a_redis_password():
    result = twistd(
        "tidehunter",
        "--url",
        "http://127.0.0.1:9/",
        "--sink",
        "redis://:hunter2@127.0.0.1:6379/0",
    )
    assert result.returncode != 0
    assert "hunter2" not in result.stderr + result.stdout
