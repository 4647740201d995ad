"""One rank of the pre-flight tests: ``good`` runs the pre-flight, ``silent`` joins the group and never
takes part in a collective (a rank whose network path is broken looks like this to the others)."""

from __future__ import annotations

import os
import sys
import time

import torch.distributed as dist

from cryptotune_daemon.training import distributed


def main(role: str) -> int:
    if role == "good":
        context = distributed.init_distributed("cpu", preflight=True)
        print(f"preflight passed on rank {context.rank}", flush=True)
        return 0
    world = int(os.environ["WORLD_SIZE"])
    store = distributed._arrive(world)
    dist.init_process_group("gloo", store=store, rank=int(os.environ["RANK"]), world_size=world)
    time.sleep(float(os.environ.get("SILENT_S", "30")))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
