"""The names of the files and folders a job writes, defined once for the daemon and the worker.

Two directories belong to a job:

- the **output dir** (the user's ``--output-dir``; one per pipeline, kept across resumes): what the
  user keeps — the adapter, the report, checkpoints and the pipeline's progress;
- the **job dir** (``STATE_DIR/jobs/JOB_ID``; one per job): what the daemon and the worker exchange —
  the spec, the event file, the worker's log, the process records and requests to the daemon.
"""

from __future__ import annotations

# -- the output dir ------------------------------------------------------------------------------------

ADAPTER_DIR = "adapter"  # the trained LoRA adapter and its tokenizer (also inside each checkpoint)
CHECKPOINTS_DIR = "checkpoints"  # step-NNNNNN/ checkpoints
CHECKPOINT_MANIFEST = "manifest.json"  # inside a checkpoint: its hashes and file digests
TRAINER_STATE_FILE = "trainer_state.json"  # inside a checkpoint: step, loss history, RNG state…
PIPELINE_STATE_FILE = "pipeline_state.json"  # which stages completed, and what from
RESOLVED_CONFIG = "resolved_config.yaml"  # the config with every `auto` resolved, plus the plan
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
LOSS_CURVE = "loss_curve.png"  # embedded in report.md
TENSORBOARD_DIR = "tensorboard"  # the TensorBoard event files rank 0 writes (training.report_to)
# What `cryptotune export` copies besides the adapter.
EXPORTED_FILES = (REPORT_JSON, REPORT_MD, LOSS_CURVE, RESOLVED_CONFIG)

# -- the job dir ---------------------------------------------------------------------------------------

SPEC_FILE = "spec.json"  # the job spec the daemon writes for the worker (worker/spec.py)
EVENTS_FILE = "events.jsonl"  # the events rank 0 appends and the daemon ingests
WORKER_LOG = "worker.log"  # the worker's stdout and stderr
LOCK_FILE = "worker.lock"  # held (flock) by every process of the job
PIDS_FILE = "worker.pids"  # every process of the job, one JSON line each
STOP_MARKER = "daemon_stopped.json"  # the daemon, not a failure, stopped following the worker
OOM_RELAUNCH_FILE = "oom_relaunch.json"  # a rank ran out of memory: relaunch with a smaller split
