"""Fault injection for tests: failures a test asks a job to suffer on purpose."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from cryptotune_daemon.errors import CryptotuneError, ErrorCode

# Test hook, never set in production: "STEP:MICRO[:RANK]" makes the trainer raise
# torch.OutOfMemoryError at optimiser step STEP whenever its micro-batch is larger than MICRO (0:
# whatever the size), in every process or only in process RANK.
TEST_HOOK_ENV = "CRYPTOTUNE_TEST_HOOK_INJECT_OOM"


@dataclass(frozen=True)
class OomTestHook:
    """Test hook: simulates a CUDA out-of-memory on a CPU.

    Attributes:
        at_step: the optimiser step (1-based) whose forward pass runs out of memory.
        fits_micro_batch: the largest micro-batch that "fits"; 0 means none does.
        rank: the only process that runs out of memory, or None for all of them.
    """

    at_step: int
    fits_micro_batch: int
    rank: int | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> OomTestHook | None:
        """The hook ``CRYPTOTUNE_TEST_HOOK_INJECT_OOM`` asks for, or None when it is unset.

        Raises:
            CryptotuneError: CONFIG_INVALID when the variable is set but malformed.
        """
        raw = environ.get(TEST_HOOK_ENV, "").strip()
        if not raw:
            return None
        step, _, rest = raw.partition(":")
        micro, _, rank = rest.partition(":")
        try:
            return cls(
                at_step=int(step), fits_micro_batch=int(micro or "0"), rank=int(rank) if rank else None
            )
        except ValueError as error:
            raise CryptotuneError(
                ErrorCode.CONFIG_INVALID,
                f"{TEST_HOOK_ENV} must look like STEP:MICRO_BATCH[:RANK], not {raw!r}",
            ) from error

    def check(self, step: int, micro_batch_size: int, rank: int = 0) -> None:
        """Raises the simulated out-of-memory when ``step`` runs with too large a micro-batch."""
        if self.rank is not None and rank != self.rank:
            return
        if step == self.at_step and micro_batch_size > self.fits_micro_batch:
            import torch

            raise torch.OutOfMemoryError(
                f"CUDA out of memory (injected by the test hook {TEST_HOOK_ENV} at step {step} "
                f"with micro-batch {micro_batch_size})"
            )
