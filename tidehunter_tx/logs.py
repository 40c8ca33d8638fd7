"""The daemon's log for programs: ``twistd --logger tidehunter_tx.logs.json``.

Every line the daemon logs about its run carries a ``tidehunter_event`` field
(``connected``, ``reconnect_scheduled``, ``limit_reached``, ``stopped``, ...)
and its numbers and words as typed fields; the README lists them.  The text
log renders the same events as it always did.

``twistd --logger NAME`` calls ``NAME()`` with no argument once the service
is made, and ignores ``--logfile``.  :func:`json` writes where ``twistd -n``
writes its text log: standard output, which the daemon points at standard
error when ``--sink stdout`` carries the records (see
:func:`tidehunter_tx.sinks.claim_stdout`), so records and log never mix.
``twist --log-format json tidehunter ...`` is the other way in; its
``--log-file`` picks the file.
"""

from __future__ import annotations

import sys

from twisted.logger import FileLogObserver, jsonFileLogObserver

__all__ = ["json"]


def json() -> FileLogObserver:
    """One JSON object per line (no RFC 7464 record separator), read back
    with ``json.loads`` per line, ``jq``, or
    :func:`twisted.logger.eventFromJSON`."""
    return jsonFileLogObserver(sys.stdout, recordSeparator="")
