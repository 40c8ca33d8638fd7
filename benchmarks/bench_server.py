"""A raw HTTP feed with a precomputed body, for the throughput benchmark.

Plain sockets rather than twisted.web so the server is never the bottleneck
and costs the same for every client: the body (``--records`` JSON lines of
exactly 200 bytes plus ``\\n``, ids consecutive from 0) is built once, held as
one ``bytearray`` and sent with ``sendall`` from a ``memoryview`` (no copies).
Every request gets ``200 OK``, no content-length, the body, then a close.

Prints its port (bound to 127.0.0.1, port 0) on the first line of stdout once
the body is ready; exits on SIGTERM or when its stdin closes, so it never
outlives the benchmark that started it.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import threading

RECORD_BYTES = 200
LINE_BYTES = RECORD_BYTES + 1
HEADER = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n"
)
MAX_REQUEST_BYTES = 64 * 1024


def record(n: int) -> bytes:
    """Record ``n``: ``{"id":n,"pad":"xx..."}`` padded to exactly 200 bytes."""
    head = b'{"id":%d,"pad":"' % n
    pad = RECORD_BYTES - len(head) - 2
    if pad < 0:
        raise ValueError(f"id {n} does not fit in {RECORD_BYTES} bytes")
    return head + b"x" * pad + b'"}'


def build_body(records: int) -> bytearray:
    """All records, newline-terminated, written into a single buffer."""
    body = bytearray(records * LINE_BYTES)
    view = memoryview(body)
    offset = 0
    for n in range(records):
        view[offset : offset + RECORD_BYTES] = record(n)
        view[offset + RECORD_BYTES] = 0x0A
        offset += LINE_BYTES
    view.release()
    return body


def read_request(conn: socket.socket) -> bool:
    """Read the request head, so closing later never resets unread bytes."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk or len(data) > MAX_REQUEST_BYTES:
            return False
        data += chunk
    return True


def serve_one(conn: socket.socket, body: memoryview) -> None:
    """Answer one request; a client that hangs up early is not an error."""
    with conn:
        try:
            if read_request(conn):
                conn.sendall(HEADER)
                conn.sendall(body)
                conn.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def exit_when_stdin_closes() -> None:
    """The parent died or closed our stdin: stop at once."""
    sys.stdin.buffer.read()
    os._exit(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    args = parser.parse_args()
    body = memoryview(build_body(args.records))
    listener = socket.create_server(("127.0.0.1", 0), backlog=16)
    threading.Thread(target=exit_when_stdin_closes, daemon=True).start()
    print(listener.getsockname()[1], flush=True)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve_one, args=(conn, body), daemon=True).start()


if __name__ == "__main__":
    main()
