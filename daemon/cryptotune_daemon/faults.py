"""Fault injection: the one seam through which tests make a job fail on purpose.

A production daemon never injects anything: ``cryptotuned`` refuses ``--inject-fault`` unless it
was also started with the test-only flag ``--enable-fault-injection``. The daemon then copies its
:class:`FaultInjection` into every job's spec (``fault_injection`` in ``spec.json``), and the worker
hands each fault to the code that simulates it. Nothing reads an environment variable.

Faults (``--inject-fault KIND=VALUE``, repeatable):

- ``oom=STEP:MICRO[:RANK]`` — the trainer raises ``torch.OutOfMemoryError`` at optimiser step STEP
  whenever its micro-batch is larger than MICRO (0: whatever the size), in every process or only in
  process RANK (:class:`OomTestHook`).
- ``crash_in_checkpoint=STEP`` — the worker SIGKILLs itself once per output dir, midway through
  writing the checkpoint of step STEP (the files are written, the manifest is not).
- ``reconcile_delay_s=SECONDS`` — the daemon waits this long before reconciling jobs at start-up
  (widens the window in which its health check must say NOT_SERVING).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptotune_daemon.errors import CryptotuneError, ErrorCode

ENABLE_FLAG = "--enable-fault-injection"
INJECT_FLAG = "--inject-fault"


@dataclass(frozen=True)
class OomTestHook:
    """Simulates a CUDA out-of-memory (on a CPU too).

    Attributes:
        at_step: the optimiser step (1-based) whose forward pass runs out of memory.
        fits_micro_batch: the largest micro-batch that "fits"; 0 means none does.
        rank: the only process that runs out of memory, or None for all of them.
    """

    at_step: int
    fits_micro_batch: int
    rank: int | None = None

    @classmethod
    def parse(cls, raw: str) -> OomTestHook:
        """``STEP:MICRO[:RANK]`` as a hook.

        Raises:
            CryptotuneError: REQUEST_INVALID when malformed.
        """
        step, _, rest = raw.strip().partition(":")
        micro, _, rank = rest.partition(":")
        try:
            return cls(
                at_step=int(step), fits_micro_batch=int(micro or "0"), rank=int(rank) if rank else None
            )
        except ValueError as error:
            raise CryptotuneError(
                ErrorCode.REQUEST_INVALID, f"fault oom must look like STEP:MICRO_BATCH[:RANK], not {raw!r}"
            ) from error

    def text(self) -> str:
        """The ``STEP:MICRO[:RANK]`` form (what :meth:`parse` reads)."""
        return f"{self.at_step}:{self.fits_micro_batch}" + ("" if self.rank is None else f":{self.rank}")

    def fails(self, step: int, micro_batch_size: int, rank: int = 0) -> bool:
        """Whether ``step`` runs out of memory in process ``rank`` with this micro-batch."""
        if self.rank is not None and rank != self.rank:
            return False
        return step == self.at_step and micro_batch_size > self.fits_micro_batch


@dataclass(frozen=True)
class FaultInjection:
    """The faults a test daemon injects into its jobs (all None/0: none, as in production)."""

    oom: OomTestHook | None = None
    crash_in_checkpoint: int | None = None
    reconcile_delay_s: float = 0.0

    @property
    def any(self) -> bool:
        """Whether any fault is asked for."""
        return self != NO_FAULTS

    def to_json(self) -> dict[str, Any] | None:
        """The spec's ``fault_injection`` object (None when there is no fault)."""
        if not self.any:
            return None
        return {
            "oom": None if self.oom is None else self.oom.text(),
            "crash_in_checkpoint": self.crash_in_checkpoint,
            "reconcile_delay_s": self.reconcile_delay_s,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any] | None) -> FaultInjection:
        """Reads :meth:`to_json`'s object.

        Raises:
            CryptotuneError: REQUEST_INVALID when malformed.
        """
        if not raw:
            return NO_FAULTS
        try:
            oom, crash = raw.get("oom"), raw.get("crash_in_checkpoint")
            return cls(
                oom=None if oom is None else OomTestHook.parse(str(oom)),
                crash_in_checkpoint=None if crash is None else int(crash),
                reconcile_delay_s=float(raw.get("reconcile_delay_s") or 0.0),
            )
        except (TypeError, ValueError) as error:
            raise CryptotuneError(ErrorCode.REQUEST_INVALID, f"malformed fault_injection: {error}") from error

    @classmethod
    def parse(cls, items: Iterable[str]) -> FaultInjection:
        """The faults of ``--inject-fault KIND=VALUE`` options.

        Raises:
            CryptotuneError: REQUEST_INVALID for an unknown kind or a malformed value.
        """
        fields: dict[str, Any] = {}
        for item in items:
            kind, sep, value = item.partition("=")
            try:
                if not sep:
                    raise ValueError("expected KIND=VALUE")
                if kind == "oom":
                    fields["oom"] = OomTestHook.parse(value)
                elif kind == "crash_in_checkpoint":
                    fields["crash_in_checkpoint"] = int(value)
                elif kind == "reconcile_delay_s":
                    fields["reconcile_delay_s"] = float(value)
                else:
                    raise ValueError("kinds: oom, crash_in_checkpoint, reconcile_delay_s")
            except ValueError as error:
                raise CryptotuneError(
                    ErrorCode.REQUEST_INVALID, f"{INJECT_FLAG} {item!r}: {error}"
                ) from error
        return cls(**fields)


NO_FAULTS = FaultInjection()
