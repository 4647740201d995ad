"""Job commands: train, status, watch, jobs, cancel, logs, demo.

rich and the live display are imported inside the functions that draw, so that listing these
commands (``cryptotune --help``) costs only click.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import click

from cryptotune._lazy import LazyModule
from cryptotune.cli.comparison import print_comparison
from cryptotune.cli.completion import complete_job
from cryptotune.cli.context import CliContext, pass_cli
from cryptotune.paths import expand_home
from cryptotune.types import JobState

if TYPE_CHECKING:
    from rich.progress import Progress

    from cryptotune.cli import render
    from cryptotune.cli.live import JobView
    from cryptotune.errors import DaemonUnavailable
    from cryptotune.types import Job, JobEvent
else:
    render = LazyModule("cryptotune.cli.render")  # rich: imported when a command draws

LARGE_UPLOAD_BYTES = 8 * 1024 * 1024
EXIT_JOB_FAILED = 1
# Where a job writes when neither --output-dir nor system.output_dir says (the daemon applies it).
DEFAULT_OUTPUT_DIR = "training_output"


def _upload_progress(cli_ctx: CliContext, data: Path) -> tuple[Progress | None, object]:
    size = data.stat().st_size if data.is_file() else 0
    if cli_ctx.json_output or size < LARGE_UPLOAD_BYTES:
        return None, None
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    bar = Progress(
        TextColumn(f"uploading {data.name}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=cli_ctx.err,
        transient=True,
    )
    task = bar.add_task("upload", total=size)
    return bar, task


def _reattach_command(job: Job, last_seq: int) -> str:
    return f"cryptotune watch {job.pipeline_id} --since {last_seq}"


def _detached_dict(job: Job, last_seq: int) -> dict[str, object]:
    """What ``--json`` prints when Ctrl-C detaches from a job (which keeps running)."""
    return {
        "detached": True,
        "job_id": job.job_id,
        "pipeline_id": job.pipeline_id,
        "reattach": _reattach_command(job, last_seq),
    }


def _follow(cli_ctx: CliContext, job: Job, after_seq: int = 0) -> JobView:
    """Shows the live display until the job ends; Ctrl-C detaches without cancelling."""
    from rich.text import Text

    from cryptotune.cli.live import JobView, LiveDisplay

    view = JobView(job_id=job.job_id, state=job.state, last_seq=after_seq)
    display = LiveDisplay(cli_ctx.out, f"{job.pipeline_id} ({job.job_id})")
    try:
        return display.follow(view, _events(cli_ctx, job.job_id, after_seq))
    except KeyboardInterrupt:
        cli_ctx.err.print(
            Text.assemble(
                ("Detached; the job keeps running. ", "yellow"),
                f"Re-attach with: {_reattach_command(job, view.last_seq)}",
            )
        )
        sys.exit(0)


def _follow_quietly(cli_ctx: CliContext, job: Job) -> None:
    """``--json`` follow: waits for the job's end; Ctrl-C detaches and prints how to re-attach."""
    last_seq = 0
    try:
        for event in _events(cli_ctx, job.job_id):
            last_seq = event.seq
    except KeyboardInterrupt:
        cli_ctx.emit_json(_detached_dict(job, last_seq))
        sys.exit(0)


def _events(cli_ctx: CliContext, job_id: str, after_seq: int = 0) -> Iterator[JobEvent]:
    """The job's events; a daemon restart pauses them (with a note on stderr) instead of ending them."""
    return cli_ctx.client().follow(job_id, after_seq=after_seq, on_disconnect=_disconnected_note(cli_ctx))


def _disconnected_note(cli_ctx: CliContext) -> Callable[[DaemonUnavailable], None]:
    """What to tell the user when a followed stream loses the daemon (the stream then waits)."""

    def disconnected(error: DaemonUnavailable) -> None:
        from rich.text import Text

        cli_ctx.err.print(
            Text.assemble(
                ("The daemon went away ", "yellow"),
                f"({error.message}); the job keeps running. Waiting for it to come back (Ctrl-C detaches)…",
            )
        )

    return disconnected


def _follow_to_end(
    cli_ctx: CliContext, job: Job, epilogue: Callable[[CliContext, Job], None] | None = None
) -> NoReturn:
    """Follows a job until it ends, prints its outcome (or final status JSON) and exits 0/1.

    ``epilogue`` runs after the outcome is printed (not with --json), e.g. the demo's comparison.
    """
    client = cli_ctx.client()
    if cli_ctx.json_output:
        _follow_quietly(cli_ctx, job)
    else:
        _follow(cli_ctx, job)
    final = client.get_job(job.job_id)
    if cli_ctx.json_output:
        cli_ctx.emit_json(final.status_dict())
    else:
        render.outcome(cli_ctx.out, final)
        if epilogue is not None and final.state is JobState.SUCCEEDED:
            epilogue(cli_ctx, final)
    sys.exit(0 if final.state is JobState.SUCCEEDED else EXIT_JOB_FAILED)


@click.command("train")
@click.argument("data_file", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("config_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--output-dir",
    "-o",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the daemon writes adapter, checkpoints and report (resolved here). "
    "[default: the config's system.output_dir, else ./training_output]",
)
@click.option(
    "--pipeline-id", default=None, help="Name for the job: [A-Za-z0-9._-]{1,64}; generated if absent."
)
@click.option(
    "--resume",
    default=None,
    metavar="ID[@STEP]",
    help="Continue pipeline ID from its newest verified checkpoint (or STEP).",
)
@click.option("--dry-run", is_flag=True, help="Plan only: samples, tokens, steps, batch, precision, memory.")
@click.option("--detach", is_flag=True, help="Submit and return at once.")
@pass_cli
def train(
    cli_ctx: CliContext,
    data_file: Path,
    config_file: Path,
    output_dir: Path | None,
    pipeline_id: str | None,
    resume: str | None,
    dry_run: bool,
    detach: bool,
) -> None:
    """Train a LoRA adapter on DATA_FILE with CONFIG_FILE, following progress live."""
    for path in (data_file, config_file):
        if not path.is_file():
            cli_ctx.fail(f"{path}: no such file")
    client = cli_ctx.client()
    bar, task = _upload_progress(cli_ctx, data_file)
    if bar is not None:
        bar.start()
    try:
        job = client.submit(
            data_file,
            config_file,
            output_dir=output_dir,
            pipeline_id=pipeline_id,
            resume=resume,
            dry_run=dry_run,
            progress=(lambda sent, total: bar.update(task, completed=sent)) if bar is not None else None,  # type: ignore[arg-type]
        )
    finally:
        if bar is not None:
            bar.stop()
    if resume is not None:
        if output_dir is not None:
            _warn_output_dir_on_resume(cli_ctx, job, output_dir)
    elif not cli_ctx.json_output:
        cli_ctx.err.print(
            f"output dir: {job.output_dir} ({output_dir_source(job.output_dir, output_dir)})",
            highlight=False,
            soft_wrap=True,
        )
    if detach:
        if cli_ctx.json_output:
            cli_ctx.emit_json(
                {"job_id": job.job_id, "pipeline_id": job.pipeline_id, "state": job.state.value}
            )
        else:
            from rich.text import Text

            cli_ctx.out.print(f"submitted {job.pipeline_id} (job {job.job_id}), {job.state.value}")
            cli_ctx.out.print(Text(f"follow it with: cryptotune watch {job.pipeline_id}", style="dim"))
        return
    _follow_to_end(cli_ctx, job)


def output_dir_source(used: str, option: Path | None) -> str:
    """Which setting chose a new job's output dir: --output-dir, system.output_dir or the default."""
    if option is not None:
        return "from --output-dir"
    if Path(used) == (Path.cwd() / DEFAULT_OUTPUT_DIR).resolve():
        return f"the default ./{DEFAULT_OUTPUT_DIR}"
    return "from the config's system.output_dir"


def _warn_output_dir_on_resume(cli_ctx: CliContext, job: Job, requested: Path) -> None:
    """A resumed pipeline keeps writing where it started; says so when --output-dir asked otherwise."""
    if expand_home(requested).resolve() == Path(job.output_dir):
        return
    from rich.text import Text

    cli_ctx.err.print(
        Text.assemble(
            ("warning: ", "bold yellow"),
            f"--output-dir {requested} is ignored when resuming: pipeline {job.pipeline_id} "
            f"keeps writing to its original output dir {job.output_dir}",
        ),
        highlight=False,
        soft_wrap=True,
    )


@click.command("status")
@click.argument("job", required=False, shell_complete=complete_job)
@pass_cli
def status(cli_ctx: CliContext, job: str | None) -> None:
    """Show JOB (job id, pipeline id or PIPELINE_DIR), or recent jobs without an argument."""
    client = cli_ctx.client()
    if job is None:
        jobs = client.list_jobs(limit=20)
        if cli_ctx.json_output:
            cli_ctx.emit_json({"jobs": [j.status_dict() for j in jobs]})
        else:
            cli_ctx.out.print(render.jobs_table(jobs) if jobs else "no jobs yet")
        return
    ref = str(Path(job).resolve()) if Path(job).is_dir() else job
    found = client.get_job(ref)
    if cli_ctx.json_output:
        cli_ctx.emit_json(found.status_dict())
    else:
        render.job_detail(cli_ctx.out, found)


@click.command("jobs")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@pass_cli
def jobs(cli_ctx: CliContext, limit: int) -> None:
    """List recent jobs, newest first."""
    found = cli_ctx.client().list_jobs(limit=limit)
    if cli_ctx.json_output:
        cli_ctx.emit_json({"jobs": [j.status_dict() for j in found]})
    else:
        cli_ctx.out.print(render.jobs_table(found) if found else "no jobs yet")


@click.command("watch")
@click.argument("job", shell_complete=complete_job)
@click.option(
    "--since",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="Only events after this sequence number.",
)
@pass_cli
def watch(cli_ctx: CliContext, job: str, since: int) -> None:
    """Stream JOB's events until it ends (Ctrl-C detaches)."""
    client = cli_ctx.client()
    found = client.get_job(job)
    if cli_ctx.json_output:
        _print_json_events(found, _events(cli_ctx, found.job_id, since), since)
    else:
        _follow(cli_ctx, found, after_seq=since)
        render.outcome(cli_ctx.out, client.get_job(found.job_id))
    final = client.get_job(found.job_id)
    sys.exit(0 if final.state is JobState.SUCCEEDED else EXIT_JOB_FAILED)


def _print_json_events(job: Job, events: Iterator[JobEvent], after_seq: int) -> None:
    """One JSON object per line per event; Ctrl-C ends the stream with a ``detached`` object."""
    last_seq = after_seq
    try:
        for event in events:
            _echo_json_line(
                {
                    "seq": event.seq,
                    "type": event.type,
                    "ts": event.ts,
                    "job_id": event.job_id,
                    "data": event.data,
                }
            )
            last_seq = event.seq
    except KeyboardInterrupt:
        _echo_json_line(_detached_dict(job, last_seq))
        sys.exit(0)


def _echo_json_line(value: object) -> None:
    click.echo(json.dumps(value, ensure_ascii=False))


@click.command("cancel")
@click.argument("job", shell_complete=complete_job)
@pass_cli
def cancel(cli_ctx: CliContext, job: str) -> None:
    """Cancel JOB: its whole process tree is ended and its GPUs freed."""
    found = cli_ctx.client().cancel(job)
    if cli_ctx.json_output:
        cli_ctx.emit_json(found.status_dict())
    elif found.terminal and found.state is not JobState.CANCELLED:
        cli_ctx.out.print(f"{found.pipeline_id} had already ended: {found.state.value}")
    else:
        cli_ctx.out.print(f"{found.pipeline_id} ({found.job_id}): {found.state.value}")


@click.command("logs")
@click.argument("job", shell_complete=complete_job)
@click.option("--follow", "-f", is_flag=True, help="Keep streaming until the job ends.")
@pass_cli
def logs(cli_ctx: CliContext, job: str, follow: bool) -> None:
    """Print JOB's worker log (with --json: one document, or with -f one {"line": ...} per line)."""
    client = cli_ctx.client()
    try:
        if cli_ctx.json_output and not follow:
            lines = list(client.logs(job, follow=False))
            cli_ctx.emit_json({"job_id": client.get_job(job).job_id, "lines": lines})
            return
        stream = (
            client.follow_logs(job, on_disconnect=_disconnected_note(cli_ctx)) if follow else client.logs(job)
        )
        for line in stream:
            if cli_ctx.json_output:
                _echo_json_line({"line": line})
            else:
                click.echo(line)
    except KeyboardInterrupt:
        sys.exit(0)


@click.command("demo")
@click.option(
    "--output-dir",
    "-o",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("~/cryptotune_demo"),
    show_default=True,
    help="Parent directory of the demo's output (must lie under the daemon's allowed output roots).",
)
@pass_cli
def demo(cli_ctx: CliContext, output_dir: Path) -> None:
    """Train builtin:tiny-qwen3 on the bundled Chinese cryptography sample, live."""
    from importlib import resources

    from rich.text import Text

    examples = resources.files("cryptotune") / "examples"
    with (
        resources.as_file(examples / "crypto_qa_zh.jsonl") as data,
        resources.as_file(examples / "demo_config.yaml") as config,
    ):
        pipeline_id = "demo-" + dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        target = expand_home(output_dir) / pipeline_id
        if not cli_ctx.json_output:
            cli_ctx.out.print(
                Text.assemble(
                    ("cryptotune demo: ", "bold"),
                    f"LoRA on builtin:tiny-qwen3 (random weights, real Qwen3 tokenizer) with {data.name}",
                )
            )
        job = cli_ctx.client().submit(data, config, output_dir=target, pipeline_id=pipeline_id)
    _follow_to_end(cli_ctx, job, print_comparison)


COMMANDS = (train, status, watch, jobs, cancel, logs, demo)
