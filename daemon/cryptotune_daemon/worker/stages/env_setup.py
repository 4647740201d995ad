"""``env_setup``: this process's distributed group, seeds, metrics reporters and GPU sampler."""

from __future__ import annotations

import logging
import os

from cryptotune_daemon.errors import CryptotuneError, ErrorCode
from cryptotune_daemon.worker.stages.base import PIPELINE_LOGGER, StageBase

log = logging.getLogger(PIPELINE_LOGGER)


class EnvSetupStage(StageBase):
    """The ``env_setup`` stage and its restore."""

    def _env_setup(self) -> None:
        from cryptotune_daemon.training.distributed import init_distributed
        from cryptotune_daemon.training.trainer import seed_everything

        # On GPUs, and whenever the ranks span machines, prove the network first: a wrong interface
        # fails here in seconds with advice, not in the first collective after hours.
        nodes = int(getattr(self.ctx.config.parallel, "nodes", 1) or 1)
        dist = init_distributed(
            self.spec.device,
            preflight=self.spec.device == "cuda" or nodes > 1,
            on_preflight_hang=self._preflight_hung,
        )
        seed_everything(int(self.ctx.config.training.seed))
        self.ctx.dist = dist
        # Ranks computed data and plan independently: make sure they agree before training.
        mine = (self.ctx.hashes.data, self.ctx.data.split.get("train", [])[:64], self.ctx.plan.total_steps)
        views = dist.all_gather_object(mine)
        if any(view != views[0] for view in views):
            raise CryptotuneError(ErrorCode.INTERNAL, "ranks disagree on the data split or the plan")
        if self.is_main and self._reporting is None:
            from cryptotune_daemon.training.reporting import open_reporting

            # Fed from the events rank 0 writes: TensorBoard (and W&B, MLflow) show what `watch` shows.
            self._reporting = open_reporting(
                list(self.ctx.config.training.report_to),
                self.output_dir,
                run_name=self.spec.pipeline_id,
                config=self.state.results.get("config_fingerprint") or {},
            )
            self.events.add_listener(self._reporting.on_event)
        if self.spec.device == "cuda" and self.is_main:
            from cryptotune_daemon.worker.gpu_sampler import GpuSampler

            self._gpu_sampler = GpuSampler(self.events.emit)
            self._gpu_sampler.start()
        self._log(
            f"environment: {dist.world_size} process(es) on {dist.device}, "
            f"seed {self.ctx.config.training.seed}"
        )

    def _preflight_hung(self, reason: str) -> None:
        """The pre-flight's set-up hung (called from its watchdog thread): record it and end now."""
        log.error("%s", reason)
        try:
            mark = getattr(self, "_mark_current", None)  # the pipeline's (records the stage as failed)
            if mark is not None:
                mark("failed", reason)
            self.events.emit("failed", {"reason": reason, "stage": "env_setup"})
            self.events.close()
        finally:
            os._exit(1)  # the main thread is blocked inside the collective library
