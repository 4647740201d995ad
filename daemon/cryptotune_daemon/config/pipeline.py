"""``pipeline_parallel``: how decoder layers are cut into stages, and the pipeline keys' rules (no torch).

A pipeline of ``world_size`` stages runs one stage per process: stage 0 holds the embeddings and
the first layers, the last stage the last layers, the final norm, the LM head and the loss. Each
pipeline step cuts the per-device batch (``per_device_train_batch_size`` samples) into
``pipeline_micro_batches`` micro-batches that flow through the stages (GPipe: every forward, then
every backward; 1F1B: one forward, one backward in the steady state).
"""

from __future__ import annotations

PIPELINE_SCHEDULES = ("gpipe", "1f1b")


def stage_layers(num_layers: int, stages: int) -> list[range]:
    """The consecutive decoder layers of each pipeline stage, as even as possible.

    When the layers do not divide evenly, the earlier stages take one layer more: the last stage
    also runs the final norm, the LM head and the loss, so it never gets more layers than the others.

    Raises:
        ValueError: fewer layers than stages (a stage without layers), or no stages.
    """
    if stages < 1:
        raise ValueError(f"a pipeline needs at least one stage, got {stages}")
    if num_layers < stages:
        raise ValueError(f"{num_layers} decoder layers cannot be cut into {stages} stages")
    base, extra = divmod(num_layers, stages)
    ranges: list[range] = []
    start = 0
    for stage in range(stages):
        size = base + (1 if stage < extra else 0)
        ranges.append(range(start, start + size))
        start += size
    return ranges


def pipeline_stages_problem(num_layers: int, stages: int, model_name: str) -> str | None:
    """Why ``stages`` pipeline stages cannot split the model's decoder layers, else None."""
    if stages <= num_layers:
        return None
    return (
        f"pipeline_parallel cuts the {num_layers} decoder layers of {model_name} into one stage per "
        f"process, so it runs on at most {num_layers} processes; got {stages}: set parallel.world_size "
        f"to {num_layers} or fewer"
    )


def pipeline_key_issues(
    strategy: str, world_size: int, schedule: str, micro_batches: int
) -> list[tuple[str, str, bool]]:
    """What is wrong with ``pipeline_schedule`` / ``pipeline_micro_batches``: ``(key, message, is_error)``.

    1F1B needs at least one micro-batch per stage (it starts one forward per stage before the
    first backward); GPipe runs with fewer, but every stage past the micro-batches only waits.
    """
    if strategy != "pipeline_parallel" or world_size <= 1 or micro_batches >= world_size:
        return []
    if schedule == "1f1b":
        return [
            (
                "pipeline_micro_batches",
                f"is {micro_batches}, but the 1f1b schedule needs at least one micro-batch per stage "
                f"({world_size} stages); set pipeline_micro_batches to {world_size} or more (e.g. "
                f"{2 * world_size}), or pipeline_schedule: gpipe",
                True,
            )
        ]
    return [
        (
            "pipeline_micro_batches",
            f"is {micro_batches} for {world_size} stages: most stages would wait; set "
            f"pipeline_micro_batches to at least {world_size} (e.g. {2 * world_size})",
            False,
        )
    ]


def micro_batch_split_note(per_device: int, micro_batches: int) -> str | None:
    """Why ``micro_batches`` micro-batches do not fit a per-device batch of ``per_device``, else None."""
    if per_device >= micro_batches:
        return None
    return (
        f"is {micro_batches}, but per_device_train_batch_size is {per_device}: each pipeline step cuts "
        f"its {per_device} sample(s) into {micro_batches} micro-batches, so {micro_batches - per_device} "
        f"of them would be empty; set per_device_train_batch_size to at least {micro_batches}"
    )
