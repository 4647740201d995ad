"""A machine with only `pip install cryptotune` (no torch) drives a remote daemon, watch included."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.jobs import wait_terminal, write_config, write_data
from tests.integration.conftest import RunningDaemon, run_cli

REPO = Path(__file__).resolve().parents[2]


def _uv() -> str | None:
    found = shutil.which("uv") or shutil.which("uv", path=str(Path(sys.executable).parent))
    local = Path.home() / ".local" / "bin" / "uv"
    return found or (str(local) if local.exists() else None)


@pytest.mark.slow
@pytest.mark.skipif(_uv() is None, reason="uv is not installed (make setup installs it)")
def test_thin_client_wheel_watches_a_job(daemon: RunningDaemon, tmp_path: Path) -> None:
    uv = _uv()
    assert uv is not None
    dist, venv = tmp_path / "dist", tmp_path / "thin"
    subprocess.run([uv, "build", "--wheel", "-q", "-o", str(dist), str(REPO)], check=True, timeout=300)
    subprocess.run([uv, "venv", "-q", str(venv)], check=True, timeout=120)
    wheel = next(dist.glob("cryptotune-*.whl"))
    subprocess.run(
        [uv, "pip", "install", "-q", "--python", str(venv / "bin" / "python"), str(wheel)],
        check=True,
        timeout=600,
    )
    python = venv / "bin" / "python"
    probe = subprocess.run(  # noqa: PLW1510 - the exit code is asserted
        [str(python), "-c", "import importlib.util as u; print(u.find_spec('torch') is None)"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert probe.stdout.strip() == "True", "the thin client must not pull in torch"

    data = write_data(tmp_path / "data.jsonl", count=8)
    config = write_config(tmp_path / "config.yaml", max_steps=3, save_steps=3)
    thin = str(venv / "bin" / "cryptotune")
    env = {**os.environ, "CRYPTOTUNE_ADDRESS": daemon.address}
    submitted = subprocess.run(  # noqa: PLW1510 - the exit code is asserted
        [
            thin,
            "--json",
            "train",
            str(data),
            str(config),
            "-o",
            str(tmp_path / "out"),
            "--detach",
            "--pipeline-id",
            "thin-1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert submitted.returncode == 0, submitted.stderr
    watched = subprocess.run(  # noqa: PLW1510 - the exit code is asserted
        [thin, "--json", "watch", "thin-1"], capture_output=True, text=True, timeout=600, env=env
    )
    assert watched.returncode == 0, watched.stderr
    assert '"type": "result"' in watched.stdout
    with daemon.client() as client:
        assert wait_terminal(client, "thin-1") == "succeeded"
    assert run_cli("status", "thin-1", address=daemon.address).exit_code == 0
