"""``complete``: save the adapter; write report.json, report.md and the loss curve."""

from __future__ import annotations

import logging
import os
import shutil
import time

from cryptotune_daemon.layout import ADAPTER_DIR
from cryptotune_daemon.worker.stages.base import PIPELINE_LOGGER, StageBase
from cryptotune_daemon.worker.state import STAGES

log = logging.getLogger(PIPELINE_LOGGER)


class CompleteStage(StageBase):
    """The ``complete`` stage and its restore."""

    def _complete(self) -> None:
        from cryptotune_daemon.training.report import build_report, peak_memory_mb, write_report

        self._complete_started = time.monotonic()
        dist = self.ctx.dist
        adapter = self.output_dir / ADAPTER_DIR
        if self.is_main:
            temp = self.output_dir / f".{ADAPTER_DIR}.tmp-{os.getpid()}"
            shutil.rmtree(temp, ignore_errors=True)
            self.ctx.model.save_pretrained(str(temp))
            self.ctx.tokenizer.save_pretrained(str(temp))
            if adapter.exists():
                shutil.rmtree(adapter)
            temp.rename(adapter)
            state = self.ctx.trainer_state
            stage_seconds = {
                s: float(self.state.stages[s]["seconds"])
                for s in STAGES
                if s != "complete" and "seconds" in self.state.stages.get(s, {})
            }
            # This stage is still running: count it up to the report (the event has the final value).
            stage_seconds["complete"] = round(time.monotonic() - self._complete_started, 3)
            report = build_report(
                pipeline_id=self.spec.pipeline_id,
                job_id=self.spec.job_id,
                model=self.ctx.source.name,
                train_samples=len(self.ctx.data.train),
                eval_samples=len(self.ctx.data.eval),
                trainer_state=state,
                metrics=dict(self.state.results.get("metrics") or {}),
                tokens_per_second=self.ctx.tokens_per_second,
                peak_memory_mb=peak_memory_mb(dist.device.type),
                stage_seconds=stage_seconds,
                wall_seconds=round(time.monotonic() - self._started, 3),
                adapter_path=adapter,
                resumed_from_step=self.ctx.resumed_from_step,
                plan=self.ctx.plan,
                device=dist.device.type,
                world_size=dist.world_size,
                mesh=self.state.results.get("mesh") or {"dp": dist.world_size},
                oom_recoveries=list(self.state.results.get("oom_recoveries", [])),
                hashes=self.ctx.hashes,
            )
            write_report(self.output_dir, report, state.loss_history, state.eval_history)
        dist.barrier()
