"""``python -m cryptotune_daemon.worker.export --request FILE``: the merged-export worker process.

Merges a job's adapter into its base model (``training/merge.py``) and writes the result to the
request's output dir, reporting ``progress`` lines on stdout, then ``finished`` (or ``error``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from cryptotune_daemon.errors import CryptotuneError, ErrorCode
from cryptotune_daemon.training.model_request import encode_line, read_request

log = logging.getLogger("cryptotune.export")


def main(argv: list[str] | None = None) -> int:
    """Runs one merged export; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m cryptotune_daemon.worker.export", description=__doc__)
    parser.add_argument(
        "--request", required=True, type=Path, help="the model request JSON written by the daemon"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)  # stray prints go to the log, not into the protocol

    def progress(phase: str, done: int, total: int) -> None:
        out.write(encode_line({"type": "progress", "phase": phase, "done": done, "total": total}))

    try:
        from cryptotune_daemon.training.merge import merge_and_save

        files = merge_and_save(read_request(args.request), progress)
    except CryptotuneError as error:
        out.write(encode_line({"type": "error", "code": error.code.value, "message": error.message}))
        return 1
    except Exception as error:
        log.exception("merged export failed")
        out.write(
            encode_line(
                {"type": "error", "code": ErrorCode.INTERNAL.value, "message": f"merging failed: {error}"}
            )
        )
        return 1
    out.write(encode_line({"type": "finished", "files": len(files)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
