"""A single-node Ray cluster inside a loopback-only network namespace, for the ``list-gpus`` test.

Run as ``unshare --net python -m tests.helpers.ray_single_node JOB_ID`` (root): brings ``lo`` up,
starts Ray with two CPUs (no dashboard), reserves a placement group of one CPU named like a job's
(``cryptotune-JOB_ID-pg``), prints one JSON line ``{"address", "pid", "node_id"}`` and waits until
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

    context = ray.init(
        num_cpus=CPUS,
        include_dashboard=False,
        logging_level="WARNING",
        log_to_driver=False,
        _node_ip_address="127.0.0.1",
    )
    group = placement_group([{"CPU": 1}], name=f"cryptotune-{job_id}-pg")
    ray.get(group.ready(), timeout=60)
    print(
        json.dumps(
            {
                "address": context.address_info["gcs_address"],
                "pid": os.getpid(),
                "node_id": ray.get_runtime_context().get_node_id(),
            }
        ),
        flush=True,
    )
    sys.stdin.read()
    with contextlib.suppress(Exception):
        ray.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
