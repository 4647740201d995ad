"""Shell completion (Click's): job ids come from the daemon, quickly, and never start one.

Enable it with ``eval "$(cryptotune completion bash)"`` (or zsh, fish).
"""

from __future__ import annotations

import click
from click.shell_completion import CompletionItem, get_completion_class

COMPLETION_TIMEOUT_S = 1.0
COMPLETION_JOBS = 100


def complete_job(ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Job and pipeline ids of the daemon the command line points at, starting with ``incomplete``.

    Uses the group's --address/--token (or their environment variables), waits at most a second, and
    offers nothing when no daemon answers: completion must never start a daemon or hang a shell.
    """
    from cryptotune.client import Client
    from cryptotune.errors import CryptotuneError

    root = ctx.find_root().params
    try:
        with Client(
            root.get("address") or None,
            root.get("token"),
            tls_ca=root.get("tls_ca"),
            timeout=COMPLETION_TIMEOUT_S,
        ) as client:
            jobs = client.list_jobs(limit=COMPLETION_JOBS)
    except (CryptotuneError, OSError, ValueError):
        return []
    items: dict[str, CompletionItem] = {}
    for job in jobs:
        for value, what in ((job.job_id, f"{job.state} · {job.pipeline_id}"), (job.pipeline_id, "pipeline")):
            if value.startswith(incomplete) and value not in items:
                items[value] = CompletionItem(value, help=what)
    return list(items.values())


@click.command("completion")
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the SHELL completion script: eval "$(cryptotune completion bash)" in ~/.bashrc."""
    cls = get_completion_class(shell)
    assert cls is not None  # the Choice above lists only shells Click supports
    root = click.get_current_context().find_root().command
    click.echo(cls(root, {}, "cryptotune", "_CRYPTOTUNE_COMPLETE").source())
