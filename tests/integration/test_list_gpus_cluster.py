"""``list-gpus`` on a daemon attached to a real Ray cluster (``--ray-address``) lists its nodes.

The cluster (one node, two CPUs) runs in a loopback-only network namespace (nothing leaves the
machine); the daemon is started inside it with ``nsenter``; the CLI reaches the daemon's unix
socket from outside. A placement group named like a job's holds one CPU. Ray's token
authentication is on, with a token of the test's own (``RAY_AUTH_TOKEN``; nothing is written to
``~/.ray``): the daemon's helper authenticates like any Ray client.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.ray_cluster import require_network_namespace
from tests.integration.conftest import BIN, run_cli, short_tmp_dir, wait_serving

REPO = Path(__file__).resolve().parents[2]
JOB = "job-20261202-200000-0badcafe"
# Ray 2.60 turns token authentication on for a new local cluster and would write ~/.ray/auth_token.
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    require_network_namespace()
    log = (tmp_path_factory.mktemp("ray") / "ray.log").open("ab")
    env = {**os.environ, **RAY_ENV, "PYTHONPATH": str(REPO)}
    host = subprocess.Popen(
        ["unshare", "--net", sys.executable, "-m", "tests.helpers.ray_single_node", JOB],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=log,
        cwd=REPO,
        env=env,
        text=True,
    )
    try:
        assert host.stdout is not None
        line = host.stdout.readline()
        assert line, f"the Ray host exited ({host.poll()}); see {log.name}"
        yield json.loads(line)
    finally:
        if host.stdin is not None:
            host.stdin.close()
        try:
            host.wait(timeout=60)
        except subprocess.TimeoutExpired:
            host.kill()
            host.wait()
        log.close()


@pytest.mark.slow
def test_list_gpus_shows_the_ray_cluster(cluster: dict[str, Any]) -> None:
    state = short_tmp_dir() / "state"
    state.mkdir(parents=True)
    address = f"unix://{state}/d.sock"
    log_path = state.parent / "daemon.log"
    with log_path.open("ab") as log:
        daemon = subprocess.Popen(
            [
                *("nsenter", f"--net=/proc/{cluster['pid']}/ns/net"),
                str(BIN / "cryptotuned"),
                *("--state-dir", str(state), "--listen", address, "--warm-workers", "0"),
                *("--ray-address", cluster["address"]),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **RAY_ENV},
        )
    try:
        wait_serving(address, daemon)
        result = run_cli("list-gpus", "--json", address=address, timeout=120)
        assert result.exit_code == 0, result.stderr
        document = result.json()
        assert isinstance(document, dict)
        assert document["ray_address"] == cluster["address"] and document["cluster_note"] == ""
        (node,) = document["nodes"]
        assert node["node_id"] == cluster["node_id"] and node["address"] == "127.0.0.1"
        assert node["local"] is True and node["cpus"] == 2 and node["gpus"] == []
        assert node["held_by"] == [{"job_id": JOB, "gpus": 0.0, "cpus": 1.0}]
        # The NVML task pinned to a node answered (this node has no GPU).
        assert cluster["probe"] == {cluster["node_id"]: []}
        # Again, from the helper process that stays connected; and the table.
        table = run_cli("list-gpus", address=address, env={"COLUMNS": "200"}, timeout=120)
        assert table.exit_code == 0, table.stderr
        assert (
            "Ray cluster" in table.stdout
            and "this daemon" in table.stdout
            and f"{JOB}: 1 CPU" in table.stdout
        )
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
    # The helper process that read Ray ended with the daemon.
    log = log_path.read_text(errors="replace")
    assert "Traceback" not in log, log[-4000:]
