"""``python -m cryptotune_daemon.worker --spec SPEC.json``: run one job (one rank under torchrun)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    """Parses ``--spec`` and runs the pipeline; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m cryptotune_daemon.worker", description=__doc__)
    parser.add_argument("--spec", required=True, type=Path, help="the job spec JSON written by the daemon")
    args = parser.parse_args(argv)
    from cryptotune_daemon.worker.membership import join_job

    # Before anything slow: the daemon must see every process of the job (torchrun ranks too).
    join_job()
    from cryptotune_daemon.worker.pipeline import main as run_pipeline

    return run_pipeline(args.spec)


if __name__ == "__main__":
    sys.exit(main())
