"""``pipeline_state.json``: which stages of a pipeline completed, and what they were computed from.

The only module that reads or writes the file (the worker records progress; the daemon's submission
reads which pipeline an output dir holds).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptotune_daemon.layout import PIPELINE_STATE_FILE
from cryptotune_daemon.training.checkpoints import Hashes

# The pipeline's stages, in order: one definition for the worker and the daemon (jobs/model.py).
STAGES: tuple[str, ...] = (
    "init",
    "data_prep",
    "config_gen",
    "env_setup",
    "training",
    "evaluation",
    "complete",
)
STATE_FORMAT = 1


@dataclass
class PipelineState:
    """The persisted progress of one pipeline.

    Attributes:
        pipeline_id: the pipeline the output dir belongs to.
        stages: per stage ``{"status", "seconds", "updated_at", "error"}``; status is running,
            completed, failed or cancelled.
        hashes: data/config/tokenizer hashes the completed stages were computed from.
        results: what completed stages produced and later stages need on resume
            (``config_fingerprint``, ``split``, ``plan``, ``training``, ``metrics``, ``runs``).
    """

    pipeline_id: str
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    hashes: Hashes = field(default_factory=lambda: Hashes("", "", ""))
    results: dict[str, Any] = field(default_factory=dict)

    def completed(self, stage: str) -> bool:
        """Whether ``stage`` completed in this or an earlier run."""
        return self.stages.get(stage, {}).get("status") == "completed"

    def mark(self, stage: str, status: str, *, seconds: float | None = None, error: str = "") -> None:
        """Records a stage's status."""
        entry: dict[str, Any] = {"status": status, "updated_at": time.time()}
        if seconds is not None:
            entry["seconds"] = round(seconds, 3)
        if error:
            entry["error"] = error
        self.stages[stage] = entry

    def invalidate_from(self, stage: str) -> None:
        """Forgets the completion of ``stage`` and every later stage."""
        for name in STAGES[STAGES.index(stage) :]:
            self.stages.pop(name, None)

    def to_json(self) -> dict[str, Any]:
        """The file's JSON object."""
        return {
            "format": STATE_FORMAT,
            "pipeline_id": self.pipeline_id,
            "stages": {s: self.stages[s] for s in STAGES if s in self.stages},
            "hashes": {
                "data": self.hashes.data,
                "config": self.hashes.config,
                "tokenizer": self.hashes.tokenizer,
            },
            **self.results,
        }


def read_state(output_dir: Path) -> PipelineState | None:
    """Reads ``output_dir/pipeline_state.json``; None when absent or unreadable."""
    try:
        raw = json.loads((output_dir / PIPELINE_STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(raw, dict):
        return None
    hashes_raw, stages_raw = raw.get("hashes"), raw.get("stages")
    hashes: dict[str, Any] = hashes_raw if isinstance(hashes_raw, dict) else {}
    stages: dict[str, Any] = stages_raw if isinstance(stages_raw, dict) else {}
    results = {k: v for k, v in raw.items() if k not in ("format", "pipeline_id", "stages", "hashes")}
    return PipelineState(
        pipeline_id=str(raw.get("pipeline_id") or ""),
        stages={str(k): dict(v) for k, v in stages.items() if isinstance(v, dict)},
        hashes=Hashes(
            data=str(hashes.get("data", "")),
            config=str(hashes.get("config", "")),
            tokenizer=str(hashes.get("tokenizer", "")),
        ),
        results=results,
    )


def write_state(output_dir: Path, state: PipelineState) -> None:
    """Writes the state atomically (temp file, fsync, rename): a reader never sees half a file."""
    output_dir.mkdir(parents=True, exist_ok=True)
    target = output_dir / PIPELINE_STATE_FILE
    temp = output_dir / f".{PIPELINE_STATE_FILE}.{os.getpid()}.tmp"
    with temp.open("w", encoding="utf-8") as handle:
        json.dump(state.to_json(), handle, indent=2, ensure_ascii=False, sort_keys=False, default=str)
        handle.flush()
        os.fsync(handle.fileno())
    temp.replace(target)
