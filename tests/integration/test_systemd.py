"""The systemd unit passes ``systemd-analyze verify`` (a real systemd tool, run as a subprocess)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "cryptotuned.service"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed here")
def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    daemon = Path(sys.executable).with_name("cryptotuned")
    unit = tmp_path / "cryptotuned.service"
    unit.write_text(UNIT.read_text().replace("/opt/cryptotune/.venv/bin/cryptotuned", str(daemon)))
    completed = subprocess.run(  # noqa: PLW1510 - the output is asserted
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    problems = [
        line for line in (completed.stdout + completed.stderr).splitlines() if "cryptotuned.service" in line
    ]
    assert problems == [], problems
