"""A real multi-node Ray cluster on this machine, inside a loopback-only network namespace, for tests.

Run as ``unshare --net python -m tests.helpers.ray_cluster --reply-fd FD [NODE …]`` (root): the host
process brings ``lo`` up, starts ``ray.cluster_utils.Cluster`` (a head without CPUs, so no rank runs
on the "daemon's machine", and worker nodes with one CPU and a custom resource of their own name
each), writes one JSON line ``{"address", "pid", "nodes"}`` to FD and then obeys JSON commands on
stdin, one per line, answering each with one JSON line on FD. Replies have a pipe of their own:
Ray prints messages of its own (e.g. "Raylet is terminated" when a node is removed) on stdout at
any moment, even in the middle of a line of ours, so stdout goes to the log.

- ``{"cmd": "add", "name": "node-b"}`` → ``{"node_id": …}``: a worker node joins;
- ``{"cmd": "remove", "name": "node-b"}`` → ``{"node_id": …}``: the node's processes are killed;
- ``{"cmd": "nodes"}`` → ``{"nodes": {name: node_id}}``;
- ``{"cmd": "placement_groups"}`` → ``{"groups": [{"name", "state"}]}`` (every namespace);
- ``{"cmd": "shutdown"}``: the cluster's processes end (never ``ray stop``), then the host exits.

Processes started with ``nsenter --net=/proc/PID/ns/net`` share the namespace (the daemon of the
tests); unix sockets work across namespaces, so the test process reaches that daemon.
:class:`ClusterHost` is the test side.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

NODE_CPUS = 1
START_ATTEMPTS = 3
NODE_START_S = 180.0
# Faster failure detection than Ray's defaults (a lost node is noticed in seconds, not ~30 s).
SYSTEM_CONFIG = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}


def require_network_namespace() -> None:
    """Skips the calling test when this machine cannot host a Ray cluster in a network namespace,
    naming what is missing; fails instead where CI says it must run (``CRYPTOTUNE_REQUIRE_NETNS=1``,
    set by ``.ci/run`` after ``make netns-tools``)."""
    import pytest

    missing = missing_requirements()
    if missing is None:
        return
    message = f"a Ray cluster in a network namespace needs {missing}"
    if os.environ.get("CRYPTOTUNE_REQUIRE_NETNS") == "1":
        pytest.fail(f"{message} (CRYPTOTUNE_REQUIRE_NETNS=1: CI must run this test; see make netns-tools)")
    pytest.skip(message)


def missing_requirements() -> str | None:
    """Why this machine cannot host the test cluster (None when it can)."""
    if os.geteuid() != 0:
        return "root (for unshare --net and nsenter)"
    for tool in ("unshare", "nsenter", "ip"):
        if shutil.which(tool) is None:
            return f"the '{tool}' command (util-linux / iproute2)"
    try:
        import ray  # noqa: F401
    except ImportError:
        return "Ray (pip install 'cryptotune[ray]')"
    return None


def _patient_node_start() -> None:  # pragma: no cover - runs in the namespace
    """Gives a starting node longer than Ray's hard-coded 30 s to register (a busy CI machine)."""
    from ray._private import services

    original = services.get_node

    def get_node(*args: Any, **kwargs: Any) -> Any:
        deadline = time.monotonic() + NODE_START_S
        while True:
            try:
                return original(*args, **kwargs)
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    services.get_node = get_node


def _serve() -> None:  # pragma: no cover - runs in the namespace
    if sys.argv[1:2] != ["--reply-fd"]:
        sys.exit("usage: python -m tests.helpers.ray_cluster --reply-fd FD [NODE …]")
    replies = os.fdopen(int(sys.argv[2]), "w", encoding="utf-8")

    def answer(reply: dict[str, Any]) -> None:
        replies.write(json.dumps(reply) + "\n")
        replies.flush()

    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    import ray
    from ray.cluster_utils import Cluster

    _patient_node_start()

    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 0,
            "node_ip_address": "127.0.0.1",
            "include_dashboard": False,
            "_system_config": SYSTEM_CONFIG,
        },
    )
    nodes: dict[str, Any] = {}

    def add(name: str) -> str:
        node = cluster.add_node(
            num_cpus=NODE_CPUS, resources={name: 1}, node_ip_address="127.0.0.1", wait=True
        )
        nodes[name] = node
        return str(node.node_id)

    for name in sys.argv[3:] or ["node-a", "node-b"]:
        add(name)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=False)
    answer(
        {
            "address": cluster.address,
            "pid": os.getpid(),
            "nodes": {n: str(v.node_id) for n, v in nodes.items()},
        }
    )
    for line in sys.stdin:
        try:
            command = json.loads(line)
            kind = command["cmd"]
            if kind == "add":
                reply: dict[str, Any] = {"node_id": add(command["name"])}
            elif kind == "remove":
                node = nodes.pop(command["name"])
                cluster.remove_node(node, allow_graceful=False)
                reply = {"node_id": str(node.node_id)}
            elif kind == "nodes":
                reply = {"nodes": {n: str(v.node_id) for n, v in nodes.items()}}
            elif kind == "placement_groups":
                table = ray.util.placement_group_table()
                reply = {
                    "groups": [
                        {"name": g.get("name", ""), "state": g.get("state", "")} for g in table.values()
                    ]
                }
            elif kind == "shutdown":
                break
            else:
                reply = {"error": f"unknown command {kind}"}
        except Exception as error:
            reply = {"error": f"{type(error).__name__}: {error}"}
        answer(reply)
    with contextlib.suppress(Exception):
        ray.shutdown()
    cluster.shutdown()
    answer({"stopped": True})


class ClusterHost:
    """The test side: starts the host in a new network namespace and sends it commands."""

    def __init__(self, repo: Path, log_path: Path, nodes: tuple[str, ...] = ("node-a", "node-b")) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")])}
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("OMP_NUM_THREADS", "1")
        env["RAY_USAGE_STATS_ENABLED"] = "0"
        self._log = log_path.open("ab")
        for attempt in range(START_ATTEMPTS):
            # Ray gives a starting node 30 s to register (hard-coded): a busy machine can miss it.
            reply_read, reply_write = os.pipe()
            try:
                self.process = subprocess.Popen(
                    [
                        *("unshare", "--net", sys.executable, "-m", "tests.helpers.ray_cluster"),
                        *("--reply-fd", str(reply_write), *nodes),
                    ],
                    stdin=subprocess.PIPE,
                    stdout=self._log,
                    stderr=self._log,
                    pass_fds=(reply_write,),
                    cwd=repo,
                    env=env,
                    text=True,
                )
            except BaseException:
                os.close(reply_read)
                raise
            finally:
                os.close(reply_write)  # the host holds its own copy: its exit is our end of file
            self._replies = os.fdopen(reply_read, "r", encoding="utf-8")
            try:
                first = self._read()
                break
            except RuntimeError:
                self.process.wait()
                self._replies.close()
                if attempt == START_ATTEMPTS - 1:
                    raise
        self.address: str = first["address"]
        self.pid: int = first["pid"]
        self.node_ids: dict[str, str] = first["nodes"]

    def _read(self) -> dict[str, Any]:
        line = self._replies.readline()
        if not line:
            raise RuntimeError(f"the Ray cluster host exited ({self.process.poll()}); see {self._log.name}")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise RuntimeError(reply["error"])
        return reply

    def command(self, **command: Any) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        return self._read()

    def nsenter(self) -> list[str]:
        """The prefix that runs a command inside the cluster's network namespace."""
        return ["nsenter", f"--net=/proc/{self.pid}/ns/net"]

    def nodes(self) -> dict[str, str]:
        nodes: dict[str, str] = self.command(cmd="nodes")["nodes"]
        return nodes

    def add(self, name: str) -> str:
        node_id: str = self.command(cmd="add", name=name)["node_id"]
        return node_id

    def remove(self, name: str) -> str:
        node_id: str = self.command(cmd="remove", name=name)["node_id"]
        return node_id

    def placement_groups(self) -> list[dict[str, str]]:
        groups: list[dict[str, str]] = self.command(cmd="placement_groups")["groups"]
        return groups

    def close(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(Exception):
                self.command(cmd="shutdown")
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._replies.close()
        self._log.close()


if __name__ == "__main__":
    _serve()
