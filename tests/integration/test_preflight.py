"""The pre-flight all-reduce across real processes (gloo, CPU): ranks that cannot run a collective
fail in seconds with advice; ranks that can, pass."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from cryptotune_daemon.training.preflight import TIMEOUT_ENV

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_rank(rank: int, role: str, port: int, timeout_s: float) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "RANK": str(rank),
        "WORLD_SIZE": "2",
        "LOCAL_RANK": "0",
        "GLOO_SOCKET_IFNAME": "lo",
        "OMP_NUM_THREADS": "1",
        TIMEOUT_ENV: str(timeout_s),
        "SILENT_S": "60",
        "PYTHONPATH": os.pathsep.join([str(REPO / "daemon"), str(REPO)]),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "tests.helpers.preflight_rank", role],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def finish(process: subprocess.Popen[str], timeout: float = 120) -> tuple[int, str]:
    try:
        out, err = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return process.returncode, out + err


def test_a_rank_that_never_takes_part_fails_the_preflight_with_advice() -> None:
    port = free_port()
    silent = start_rank(1, "silent", port, 2)
    good = start_rank(0, "good", port, 2)
    try:
        code, output = finish(good)
    finally:
        silent.kill()
        silent.wait()
    assert code != 0, output
    assert "PreflightFailed" in output and "within 2 s" in output
    assert "GLOO_SOCKET_IFNAME" in output and "docs/multi-node.md" in output


def test_ranks_that_can_talk_pass_the_preflight() -> None:
    port = free_port()
    ranks = [start_rank(rank, "good", port, 60) for rank in (1, 0)]
    results = [finish(r) for r in ranks]
    for code, output in results:
        assert code == 0, output
        assert "preflight passed" in output
