"""A single-node Ray cluster inside a loopback-only network namespace, for the ``list-gpus`` test.

Run as ``unshare --net python -m tests.helpers.ray_single_node JOB_ID`` (root): brings ``lo`` up,
starts Ray with two CPUs (no dashboard), reserves a placement group of one CPU named like a job's
(``cryptotune-JOB_ID-pg``), reads its node's GPUs with the task ``list-gpus`` sends to other nodes,
prints one JSON line ``{"address", "pid", "node_id", "probe"}`` and waits until
its stdin closes, then shuts Ray down (never ``ray stop``). Processes started with
``nsenter --net=/proc/PID/ns/net`` share the namespace; unix sockets work across namespaces.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys

CPUS = 2


def main(job_id: str) -> None:  # pragma: no cover - runs in the namespace
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    import ray
    from ray.util import placement_group

    # Ray gives a raylet 30 s to register (hard-coded); on a loaded 2-core machine it may need more.
    for attempt in range(3):
        try:
            context = ray.init(
                address="local",  # a new cluster, whatever /tmp/ray says is running
                num_cpus=CPUS,
                include_dashboard=False,
                logging_level="WARNING",
                log_to_driver=False,
                _node_ip_address="127.0.0.1",
            )
            break
        except Exception as error:
            if attempt == 2 or "timed out during startup" not in str(error):
                raise
            ray.shutdown()
    group = placement_group([{"CPU": 1}], name=f"cryptotune-{job_id}-pg")
    ray.get(group.ready(), timeout=60)
    from cryptotune_daemon.cluster.inventory import probe_node_gpus

    node_id = ray.get_runtime_context().get_node_id()
    # The NVML reading list-gpus asks the other nodes for, run on this one (no GPU here: empty).
    probe = probe_node_gpus(ray, [node_id], timeout_s=60)
    print(
        json.dumps(
            {
                "address": context.address_info["gcs_address"],
                "pid": os.getpid(),
                "node_id": node_id,
                "probe": {k: [g.name for g in v] for k, v in probe.items()},
            }
        ),
        flush=True,
    )
    sys.stdin.read()
    with contextlib.suppress(Exception):
        ray.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
