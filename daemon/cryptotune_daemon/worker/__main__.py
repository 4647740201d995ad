"""``python -m cryptotune_daemon.worker --spec SPEC.json``: run one job (one rank under torchrun).

``--spec SPEC.json --ray-address ADDR --ray-namespace NS``: be the Ray driver of a job whose ranks
span machines (``worker/ray_driver.py``).

``--warm FD``: be a warm worker (``worker/warm.py``) — import everything, then wait on the socket
``FD`` for the daemon to hand over a job.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    """Parses the command line and runs the pipeline (or waits for a job); returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m cryptotune_daemon.worker", description=__doc__)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--spec", type=Path, help="the job spec JSON written by the daemon")
    mode.add_argument("--warm", type=int, metavar="FD", help="a warm worker: wait on this socket for a job")
    parser.add_argument("--cache-dir", type=Path, default=None, help="the daemon's cache dir (with --warm)")
    parser.add_argument("--ray-address", default=None, help="drive the job's ranks on this Ray cluster")
    parser.add_argument("--ray-namespace", default="cryptotune", help="the daemon's Ray namespace")
    parser.add_argument(
        "--ray-node-wait-s", type=float, default=300.0, help="after a lost node: how long to wait for room"
    )
    args = parser.parse_args(argv)
    if args.warm is not None:
        from cryptotune_daemon.worker.warm import serve

        return serve(args.warm, args.cache_dir)
    from cryptotune_daemon.worker.membership import join_job

    # Before anything slow: the daemon must see every process of the job (torchrun ranks too).
    join_job()
    if args.ray_address:
        from cryptotune_daemon.worker.ray_driver import main as drive

        return drive(args.spec, args.ray_address, args.ray_namespace, args.ray_node_wait_s)
    from cryptotune_daemon.worker.pipeline import main as run_pipeline

    return run_pipeline(args.spec)


if __name__ == "__main__":
    sys.exit(main())
