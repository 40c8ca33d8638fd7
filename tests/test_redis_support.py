"""The Redis test harness itself: if this is wrong, every Redis test lies."""

from __future__ import annotations

import pytest
from redis_support import RedisError, RedisServer, RespClient, Techies, free_port


def test_starts_on_a_free_loopback_port(redis_server: RedisServer) -> None:
    assert redis_server.port not in (0, 6379)
    assert redis_server.ping()
    assert redis_server.command("CONFIG", "GET", "bind") == [b"bind", b"127.0.0.1"]
    assert redis_server.command("CONFIG", "GET", "save") == [b"save", b""]
    assert redis_server.command("DBSIZE") == 0
    assert redis_server.url(key="q") == f"redis://127.0.0.1:{redis_server.port}/0?key=q"
    assert redis_server.url(3, "s", "redis+stream").endswith(
        f":{redis_server.port}/3?key=s"
    )


def test_two_servers_get_two_ports() -> None:
    with RedisServer() as one, RedisServer() as two:
        assert one.port != two.port
        one.command("SET", "k", "1")
        assert two.command("GET", "k") is None


def test_kill_then_restart_on_the_same_port(redis_server: RedisServer) -> None:
    port = redis_server.port
    client = redis_server.client()
    redis_server.command("RPUSH", "q", "a")
    redis_server.kill()
    assert not redis_server.ping()
    with pytest.raises(OSError):
        client.command("PING")  # the old connection is dead
    client.close()
    redis_server.restart()
    assert redis_server.port == port
    assert redis_server.ping()
    assert redis_server.command("LLEN", "q") == 0  # no persistence: a real loss


def test_restart_refuses_while_running(redis_server: RedisServer) -> None:
    with pytest.raises(RuntimeError):
        redis_server.restart()


def test_stop_removes_the_directory() -> None:
    server = RedisServer().start()
    assert server.dir.is_dir()
    server.stop()
    assert not server.dir.exists()
    assert not server.ping()


def test_resp_replies_round_trip(redis_server: RedisServer) -> None:
    blob = bytes(range(256)) + b"\r\n$-1\r\n"  # binary-safe, RESP-looking bytes
    with redis_server.client() as c:
        assert c.command("SET", "k", blob) == "OK"
        assert c.command("GET", "k") == blob
        assert c.command("GET", "missing") is None
        assert c.command("RPUSH", "q", b"a", "b", 7) == 3
        assert c.command("LRANGE", "q", 0, -1) == [b"a", b"b", b"7"]
        assert c.command("LRANGE", "missing", 0, -1) == []
        assert c.command("HSET", "h", "state", 1, "count", "7") == 2
        assert c.command("HINCRBY", "h", "count", -10) == -3
        entry_id = c.command("XADD", "s", "*", "data", "r1")
        assert isinstance(entry_id, bytes)
        assert c.command("XRANGE", "s", "-", "+") == [[entry_id, [b"data", b"r1"]]]
        assert c.command("XLEN", "s") == 1
        with pytest.raises(RedisError, match="WRONGTYPE"):
            c.command("LPUSH", "h", "x")
        replies = c.pipeline([("INCR", "n"), ("INCR", "n"), ("GET", "n")])
        assert replies == [1, 2, b"2"]
        assert c.command("MULTI") == "OK"
        assert c.command("INCR", "k") == "QUEUED"
        executed = c.command("EXEC")
        assert isinstance(executed, list)
        assert isinstance(executed[0], RedisError)  # errors in arrays are values
        assert c.command("EVAL", "return {1, 'two', nil}", 0) == [1, b"two"]
    assert redis_server.hgetall("h") == {"state": "1", "count": "-3"}


def test_free_port_is_not_listening() -> None:
    with pytest.raises(OSError):
        RespClient(free_port(), timeout=1.0)


# techies 0.2.0 interop: what the daemon must stay compatible with ------------


def test_techies_queue_reads_what_we_rpush(
    techies: Techies, redis_server: RedisServer
) -> None:
    redis_server.command("RPUSH", "q", b'{"id":0}', "caf\xe9", b"\xff")
    out = techies("""
        q = techies.Queue(key="q", host=HOST, port=PORT)
        print(q.qsize())
        for _ in range(4):
            print(ascii(q.get()))
    """)
    # FIFO via LPOP; values decoded as UTF-8 with "replace"; '' when empty.
    assert out.splitlines() == ["3", "'{\"id\":0}'", "'caf\\xe9'", "'\\ufffd'", "''"]
    assert redis_server.command("EXISTS", "q") == 0


def test_techies_state_counter_hash(
    techies: Techies, redis_server: RedisServer
) -> None:
    # A fresh StateCounter creates the hash, started.
    techies('techies.StateCounter(key="sc", host=HOST, port=PORT)')
    assert redis_server.hgetall("sc") == {"state": "1", "count": "0", "total": "0"}
    # What a producer leaves; techies ignores extra fields.
    redis_server.command("HSET", "sc", "count", 5, "limit", 10)
    out = techies("""
        sc = techies.StateCounter(key="sc", host=HOST, port=PORT)
        print(sc.started, sc.get_count(), sc.get_total(), sc.get_state())
        sc.stop()
        print(sc.stopped)
    """)
    assert out.split() == ["True", "5", "0", "1", "True"]
    # stop(): state 0, then count moved into total.
    assert redis_server.hgetall("sc") == {
        "state": "0",
        "count": "0",
        "total": "5",
        "limit": "10",
    }
    # The original's incr() on a stopped counter silently restarts it.
    techies('techies.StateCounter(key="sc", host=HOST, port=PORT).incr()')
    assert redis_server.hgetall("sc")["state"] == "1"
