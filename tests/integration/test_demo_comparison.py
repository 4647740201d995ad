"""`cryptotune demo` ends with the before/after comparison, and its report has base and tuned figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.conftest import RunningDaemon, run_cli


@pytest.mark.slow
@pytest.mark.timeout(3600)  # the whole demo: minutes on a laptop, far more on a shared CI machine
def test_demo_ends_with_base_and_fine_tuned_side_by_side(daemon: RunningDaemon, tmp_path: Path) -> None:
    result = run_cli("demo", "-o", str(tmp_path), address=daemon.address, timeout=3600)
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "before / after fine-tuning" in result.stdout
    assert "fine-tuned" in result.stdout and "base" in result.stdout
    (report_path,) = tmp_path.glob("demo-*/report.json")
    report = json.loads(report_path.read_text())
    assert report["eval_loss"] < report["base"]["eval_loss"]
    assert set(report["base"]["eval_loss_by_difficulty"]) == set(report["eval_loss_by_difficulty"])
    assert "| | base | fine-tuned |" in (report_path.parent / "report.md").read_text()
