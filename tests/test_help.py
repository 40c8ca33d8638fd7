"""``twistd tidehunter --help`` names every environment variable the daemon reads."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from support import TWISTD

PACKAGE = Path(__file__).resolve().parent.parent / "tidehunter_tx"
#: A quoted ``"TIDEHUNTER_..."`` literal in the package's source.
VARIABLE = re.compile(r"""["'](TIDEHUNTER_[A-Z0-9_]*[A-Z0-9])["']""")


def variables_in_source() -> set[str]:
    found: set[str] = set()
    for source in PACKAGE.rglob("*.py"):
        found.update(VARIABLE.findall(source.read_text()))
    return found


def test_help_names_every_credential_variable() -> None:
    names = variables_in_source()
    assert names >= {
        "TIDEHUNTER_BEARER_TOKEN",
        "TIDEHUNTER_BASIC_AUTH",
        "TIDEHUNTER_OAUTH1_CONSUMER_KEY",
        "TIDEHUNTER_OAUTH1_CONSUMER_SECRET",
        "TIDEHUNTER_OAUTH1_TOKEN_KEY",
        "TIDEHUNTER_OAUTH1_TOKEN_SECRET",
        "TIDEHUNTER_REDIS_PASSWORD",
    }, names
    done = subprocess.run(
        [*TWISTD, "tidehunter", "--help"], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    missing = sorted(name for name in names if name not in done.stdout)
    assert not missing, f"twistd tidehunter --help does not name {missing}"
