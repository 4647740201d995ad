"""The CLI starts a user daemon when nothing answers at the default address, and only then."""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

from tests.integration.conftest import BIN, kill_job_workers, run_cli, short_tmp_dir

STARTED = "Started a cryptotune daemon in the background"


def _daemon_pid(state_dir: Path) -> int | None:
    try:
        text = (state_dir / "daemon.lock").read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _daemons_of(state_dir: Path) -> list[int]:
    """Pids of the running daemon processes serving ``state_dir`` (from their command lines)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            status = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if status == "Z" or "--listen" not in argv:
            continue
        if ("--state-dir", str(state_dir)) in itertools.pairwise(argv):
            found.append(int(entry.name))
    return sorted(found)


def _stop_daemons(state_dir: Path, extra: Iterable[int] = ()) -> None:
    """SIGTERMs the state dir's daemon(s), waits for them to exit and ends their job workers."""
    pids = {pid for pid in [_daemon_pid(state_dir), *extra] if pid}
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    for pid in pids:
        for _ in range(100):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    kill_job_workers(state_dir)


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
        _stop_daemons(state)
        shutil.rmtree(root, ignore_errors=True)


def test_two_clis_at_once_start_one_daemon() -> None:
    root = short_tmp_dir()
    state = root / "state"
    env = {
        **os.environ,
        "CRYPTOTUNE_STATE_DIR": str(state),
        "CRYPTOTUNE_ADDRESS": "",
        "HF_HUB_OFFLINE": "1",
        "COLUMNS": "200",
    }
    clis: list[subprocess.Popen[str]] = []
    try:
        # Both find no daemon (it takes seconds to start) and race for the auto-start lock.
        for _ in range(2):
            clis.append(
                subprocess.Popen(
                    [str(BIN / "cryptotune"), "--json", "list-gpus"],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    env=env,
                )
            )
        outputs = [cli.communicate(timeout=180) for cli in clis]
        for cli, (stdout, stderr) in zip(clis, outputs, strict=True):
            assert cli.returncode == 0, stderr
            assert "gpus" in stdout
        announcements = [stderr.count(STARTED) for _, stderr in outputs]
        assert sorted(announcements) == [0, 1], [stderr for _, stderr in outputs]
        daemons = _daemons_of(state)
        assert daemons == [_daemon_pid(state)], daemons
        # The one daemon serves both: a third CLI reuses it.
        again = run_cli("--json", "list-gpus", env=env, timeout=60)
        assert again.exit_code == 0, again.stderr
        assert STARTED not in again.stderr
        assert _daemons_of(state) == daemons
    finally:
        for cli in clis:
            if cli.poll() is None:
                cli.kill()
                cli.communicate()
        _stop_daemons(state, _daemons_of(state))
        shutil.rmtree(root, ignore_errors=True)
    assert _daemons_of(state) == [], "the daemon outlived the test"
