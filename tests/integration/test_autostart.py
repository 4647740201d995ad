"""The CLI starts a user daemon when nothing answers at the default address, and only then."""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

from tests.integration.conftest import kill_job_workers, run_cli, short_tmp_dir


def _daemon_pid(state_dir: Path) -> int | None:
    try:
        text = (state_dir / "daemon.lock").read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def test_autostart_once_then_reuse_and_no_autostart_flag() -> None:
    root = short_tmp_dir()
    state = root / "state"
    env = {"CRYPTOTUNE_STATE_DIR": str(state), "CRYPTOTUNE_ADDRESS": "", "HF_HUB_OFFLINE": "1"}
    try:
        refused = run_cli("--no-autostart", "list-gpus", env=env, timeout=60)
        assert refused.exit_code == 3
        assert "--no-autostart" in refused.stderr
        assert not (state / "cryptotuned.sock").exists()

        first = run_cli("--json", "list-gpus", env=env, timeout=120)
        assert first.exit_code == 0, first.stderr
        assert "Started a cryptotune daemon in the background" in first.stderr
        assert (state / "cryptotuned.sock").exists()

        second = run_cli("--json", "list-gpus", env=env, timeout=60)
        assert second.exit_code == 0, second.stderr
        assert "Started" not in second.stderr
    finally:
        pid = _daemon_pid(state)
        if pid:
            os.kill(pid, signal.SIGTERM)
            for _ in range(100):
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
        kill_job_workers(state)
        shutil.rmtree(root, ignore_errors=True)
