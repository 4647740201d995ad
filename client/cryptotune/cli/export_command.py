"""``cryptotune export JOB DIR``: the adapter (checked for vLLM) or, with ``--merged``, the merged model.

rich and the SDK's types are imported when the command runs, so listing commands costs only click.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from cryptotune.cli.completion import complete_job
from cryptotune.cli.context import CliContext, pass_cli
from cryptotune.paths import expand_home

if TYPE_CHECKING:
    from rich.progress import TaskID

    from cryptotune.types import ExportProgress, ServingCheck

GGUF_OUT_OF_SCOPE = (
    "GGUF export (llama.cpp, Ollama) is out of scope for cryptotune: export --merged writes safetensors "
    "that llama.cpp's convert_hf_to_gguf.py turns into GGUF"
)


def _serving_dict(check: ServingCheck, adapter_dir: Path) -> dict[str, object]:
    found = check.to_dict()
    found["command"] = check.vllm_command(str(adapter_dir)) if check.loadable else None
    return found


def _print_serving(cli_ctx: CliContext, check: ServingCheck, adapter_dir: Path) -> None:
    from rich.text import Text

    out = cli_ctx.out
    if check.loadable:
        out.print(Text.assemble(("✓ ", "bold green"), "vLLM can serve this adapter:"))
        out.print(f"  {check.vllm_command(str(adapter_dir))}", highlight=False, soft_wrap=True)
        return
    out.print(Text.assemble(("✗ ", "bold yellow"), "vLLM would not load this adapter:"))
    for problem in check.problems:
        out.print(f"  - {problem}", highlight=False, soft_wrap=True)


@click.command("export")
@click.argument("job", shell_complete=complete_job)
@click.argument("destination", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--merged",
    is_flag=True,
    help="The base model with the adapter merged in (safetensors, tokenizer, official chat template, "
    "generation_config.json, model card) instead of the adapter and report.",
)
@click.option("--gguf", is_flag=True, help="Not supported: GGUF is out of scope (says so and exits).")
@pass_cli
def export(cli_ctx: CliContext, job: str, destination: Path, merged: bool, gguf: bool) -> None:
    """Copy JOB's adapter and report (default) or merged model (--merged) into DESTINATION on this machine.

    An adapter export says whether vLLM would load it and prints the `vllm serve` command.
    """
    if gguf:
        cli_ctx.fail(GGUF_OUT_OF_SCOPE, "request.invalid")
    from rich.progress import BarColumn, Progress, TextColumn
    from rich.text import Text

    checks: list[ServingCheck] = []
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        console=cli_ctx.err,
        transient=True,
        disable=cli_ctx.json_output or not merged,
    )
    task: TaskID = bar.add_task("merging", total=None)

    def progress(step: ExportProgress) -> None:
        if step.total:
            bar.update(task, description=step.phase, completed=step.done, total=step.total)
        else:
            bar.update(task, description=step.phase)

    with bar:
        written = cli_ctx.client().export(
            job, destination, merged=merged, on_progress=progress, on_serving_check=checks.append
        )
    adapter_dir = expand_home(destination).resolve() / "adapter"
    if cli_ctx.json_output:
        found: dict[str, object] = {"files": [str(p) for p in written], "merged": merged}
        if checks:
            found["serving"] = _serving_dict(checks[0], adapter_dir)
        cli_ctx.emit_json(found)
        return
    what = "merged model" if merged else "adapter and report"
    cli_ctx.out.print(
        Text.assemble(("✓ ", "bold green"), f"exported the {what}: {len(written)} files to {destination}")
    )
    if checks:
        _print_serving(cli_ctx, checks[0], adapter_dir)
