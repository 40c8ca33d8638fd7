"""``tidehunter-ctl``: read the counts of a running hunter, pause it, stop it.

Exit codes: 0 done, 1 the command could not be carried out (no daemon, wrong
secret, ...), 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from twisted.internet.defer import ensureDeferred
from twisted.internet.task import deferLater, react

from .control import ControlClient, ControlError, read_secret_file

__all__ = ["main"]

DEFAULT_CONTROL = "unix:tidehunter.sock:mode=600:lockfile=1"
WATCH_INTERVAL = 0.5


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tidehunter-ctl",
        description="Steer a running tidehunter daemon over AMP.",
    )
    parser.add_argument(
        "--control",
        default=DEFAULT_CONTROL,
        help="the daemon's control endpoint, as given to it (default: %(default)s)",
    )
    parser.add_argument("--secret-file", help="file holding the shared secret")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("status", help="print the counters as one JSON object")
    commands.add_parser("stop", help="stop the daemon; print the final count")
    commands.add_parser("pause", help="stop reading, keep the connection")
    commands.add_parser("resume", help="read again")
    limit = commands.add_parser("limit", help="change the record limit")
    limit.add_argument("limit", type=_non_negative, help="the new limit (0 = none)")
    commands.add_parser("watch", help="redraw a live line until interrupted")
    return parser


def _non_negative(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {value!r}") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, not {number}")
    return number


async def _run(reactor: Any, args: argparse.Namespace) -> None:
    secret = read_secret_file(args.secret_file) if args.secret_file else None
    client = await ControlClient.connect(args.control, secret, reactor)
    try:
        if args.command == "status":
            print(json.dumps(await client.status(), sort_keys=True))
        elif args.command == "stop":
            print(await client.stop())
        elif args.command == "pause":
            print(await client.pause())
        elif args.command == "resume":
            print(await client.resume())
        elif args.command == "limit":
            print(json.dumps(await client.set_limit(args.limit), sort_keys=True))
        elif args.command == "watch":
            await _watch(reactor, client)
    finally:
        client.close()


async def _watch(reactor: Any, client: ControlClient) -> None:
    """One line, redrawn in place: state, count/limit, records per second."""
    last_count, last_time = None, time.monotonic()
    width = 0
    while not client.disconnected.called:
        try:
            status = await client.status()
        except ControlError:
            break  # the daemon went away: that ends a watch normally
        now = time.monotonic()
        count = status["count"]
        rate = 0.0
        if last_count is not None and now > last_time:
            rate = max(count - last_count, 0) / (now - last_time)
        last_count, last_time = count, now
        limit = status["limit"] or "-"
        line = (
            f"{status['state']:<12} {count}/{limit}  {rate:,.1f} rec/s  "
            f"reconnects {status['reconnects']}  skipped {status['skipped']}"
        )
        width = max(width, len(line))
        sys.stdout.write("\r" + line.ljust(width))
        sys.stdout.flush()
        await deferLater(reactor, WATCH_INTERVAL, lambda: None)
    sys.stdout.write("\ndaemon stopped\n")


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)

    async def run(reactor: Any) -> None:
        try:
            await _run(reactor, args)
        except ControlError as error:
            print(f"tidehunter-ctl: {error}", file=sys.stderr)
            raise SystemExit(1) from None

    react(lambda reactor: ensureDeferred(run(reactor)))


if __name__ == "__main__":
    main()
