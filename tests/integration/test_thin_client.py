"""The thin client never loads torch, transformers, peft or daemon modules."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "transformers", "peft", "cryptotune_daemon", "pydantic", "yaml")

PROBE = """
import sys
from cryptotune.cli.main import cli
try:
    cli(["--help"], prog_name="cryptotune", standalone_mode=False)
except SystemExit:
    pass
import cryptotune
from cryptotune import Client
loaded = sorted(m for m in sys.modules if m.split(".")[0] in {heavy!r})
print("LOADED:" + ",".join(loaded))
"""


def test_help_loads_no_heavy_module() -> None:
    completed = subprocess.run(  # noqa: PLW1510 - the exit code is asserted
        [sys.executable, "-c", PROBE.format(heavy=set(HEAVY))], capture_output=True, text=True, timeout=60
    )
    assert completed.returncode == 0, completed.stderr
    loaded = completed.stdout.strip().splitlines()[-1]
    assert loaded == "LOADED:", f"thin client loaded heavy modules: {loaded}"
    assert "Usage:" in completed.stdout


def test_every_command_has_help() -> None:
    for command in (
        "init-config",
        "validate-config",
        "list-gpus",
        "inspect-data",
        "train",
        "status",
        "watch",
        "jobs",
        "cancel",
        "logs",
        "export",
        "demo",
    ):
        completed = subprocess.run(  # noqa: PLW1510 - the exit code is asserted
            [sys.executable, "-m", "cryptotune.cli.main", command, "--help"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert completed.returncode == 0, (command, completed.stderr)
        assert "Usage:" in completed.stdout
