"""``cryptotune chat JOB``: talk to a fine-tuned model through the daemon, reasoning dimmed, answer plain.

The SDK's types and rich are imported when the command runs, so listing commands costs only click.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import click

from cryptotune.cli.completion import complete_job
from cryptotune.cli.context import CliContext, pass_cli

if TYPE_CHECKING:
    from cryptotune.types import ChatDone, ChatEvent, ChatStatus

EXIT_INTERRUPTED = 130
_HEADERS = {"tuned": "fine-tuned", "base": "base model"}


@dataclass
class Sampling:
    """The chat's generation settings (None: the model card's default, chosen by the daemon)."""

    max_new_tokens: int | None
    temperature: float | None
    top_p: float | None
    top_k: int | None
    seed: int | None
    compare: bool


@dataclass
class Answers:
    """The finished answers of one turn, by model (``tuned``, ``base``)."""

    done: dict[str, ChatDone] = field(default_factory=dict)


def _events(
    cli_ctx: CliContext, job: str, messages: list[dict[str, str]], sampling: Sampling
) -> Iterator[ChatEvent]:
    return cli_ctx.client().generate(
        job,
        messages,
        max_new_tokens=sampling.max_new_tokens or 0,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        top_k=sampling.top_k,
        seed=sampling.seed,
        compare=sampling.compare,
    )


def _status(cli_ctx: CliContext, event: ChatStatus) -> None:
    from rich.text import Text

    if event.state != "ready":
        cli_ctx.err.print(Text(f"{event.state}: {event.message}", style="dim italic"), highlight=False)


def _show_turn(cli_ctx: CliContext, events: Iterator[ChatEvent], compare: bool) -> Answers:
    """Streams one turn to the terminal: reasoning dimmed, the answer plain, a header per model."""
    from rich.table import Table
    from rich.text import Text

    from cryptotune.types import ChatPiece, ChatStatus

    out = cli_ctx.out
    answers = Answers()
    current: tuple[str, str] | None = None
    for event in events:
        if isinstance(event, ChatStatus):
            _status(cli_ctx, event)
        elif isinstance(event, ChatPiece):
            if current is None or current[0] != event.model:
                if compare:
                    out.print(Text(f"── {_HEADERS[event.model]} ──", style="bold cyan"), highlight=False)
                current = (event.model, "")
            if current[1] != event.channel and event.channel == "answer" and current[1] == "reasoning":
                out.print(highlight=False)
            current = (event.model, event.channel)
            out.print(
                Text(event.text, style="dim" if event.channel == "reasoning" else ""),
                end="",
                highlight=False,
                soft_wrap=True,
            )
        else:
            answers.done[event.model] = event
            suffix = " [stopped at --max-new-tokens]" if event.finish_reason == "length" else ""
            out.print(Text(suffix, style="yellow"), highlight=False)
            current = None
    if compare and {"tuned", "base"} <= set(answers.done):
        table = Table(title="answers side by side", show_lines=True)
        table.add_column("base model")
        table.add_column("fine-tuned")
        table.add_row(
            answers.done["base"].answer or "(no answer)", answers.done["tuned"].answer or "(no answer)"
        )
        out.print(table)
    return answers


def _json_turn(events: Iterator[ChatEvent], cli_ctx: CliContext) -> None:
    """One JSON object per decoded piece, then one with the whole answer (and the base model's)."""
    from cryptotune.types import ChatPiece, ChatStatus

    answers = Answers()
    for event in events:
        if isinstance(event, ChatStatus):
            _status(cli_ctx, event)
        elif isinstance(event, ChatPiece):
            click.echo(
                json.dumps(
                    {"model": event.model, "channel": event.channel, "text": event.text}, ensure_ascii=False
                )
            )
        else:
            answers.done[event.model] = event
    final: dict[str, object] = {}
    tuned = answers.done.get("tuned")
    if tuned is not None:
        final = {
            "reasoning": tuned.reasoning,
            "answer": tuned.answer,
            "finish_reason": tuned.finish_reason,
            "prompt_tokens": tuned.prompt_tokens,
            "generated_tokens": tuned.generated_tokens,
        }
    base = answers.done.get("base")
    if base is not None:
        final["base"] = {
            "reasoning": base.reasoning,
            "answer": base.answer,
            "finish_reason": base.finish_reason,
        }
    click.echo(json.dumps(final, ensure_ascii=False))


def _interactive(cli_ctx: CliContext, job: str, sampling: Sampling) -> None:
    """A conversation: each answer joins the history (without its reasoning, as the model card says)."""
    from rich.text import Text

    history: list[dict[str, str]] = []
    cli_ctx.err.print(
        Text("Chatting with " + job + ". Ctrl-C stops an answer; Ctrl-D or /exit leaves.", style="dim"),
        highlight=False,
    )
    while True:
        try:
            prompt = cli_ctx.out.input(Text("you> ", style="bold green"))
        except (EOFError, KeyboardInterrupt):
            cli_ctx.out.print()
            return
        if prompt.strip() in ("/exit", "/quit"):
            return
        if not prompt.strip():
            continue
        messages = [*history, {"role": "user", "content": prompt}]
        try:
            answers = _show_turn(cli_ctx, _events(cli_ctx, job, messages, sampling), sampling.compare)
        except KeyboardInterrupt:
            cli_ctx.out.print(Text("\n(stopped)", style="yellow"), highlight=False)
            continue
        tuned = answers.done.get("tuned")
        if tuned is not None:
            history = [*messages, {"role": "assistant", "content": tuned.answer}]


@click.command("chat")
@click.argument("job", shell_complete=complete_job)
@click.option(
    "--prompt", "-p", metavar="TEXT", help="Ask one question and exit (default: an interactive chat)."
)
@click.option(
    "--compare", is_flag=True, help="Also answer with the base model (adapter disabled), side by side."
)
@click.option(
    "--max-new-tokens",
    type=click.IntRange(1, 32768),
    default=None,
    metavar="N",
    help="Cap per answer [1024].",
)
@click.option(
    "--temperature",
    type=click.FloatRange(0, 2),
    default=None,
    help="Sampling temperature; 0 is greedy [0.6].",
)
@click.option(
    "--top-p", type=click.FloatRange(0, 1, min_open=True), default=None, help="Nucleus mass [0.95]."
)
@click.option("--top-k", type=click.IntRange(0, 1000), default=None, help="Top-k sampling; 0 keeps all [20].")
@click.option("--seed", type=click.IntRange(0), default=None, help="Seed for reproducible sampling.")
@pass_cli
def chat(
    cli_ctx: CliContext,
    job: str,
    prompt: str | None,
    compare: bool,
    max_new_tokens: int | None,
    temperature: float | None,
    top_p: float | None,
    top_k: int | None,
    seed: int | None,
) -> None:
    """Chat with JOB's fine-tuned model (the daemon loads it in an inference worker).

    The reasoning is shown dimmed, the answer plain. With --json (needs --prompt): one JSON object per
    decoded piece, then one with "reasoning" and "answer" (and "base" with --compare).
    """
    sampling = Sampling(max_new_tokens, temperature, top_p, top_k, seed, compare)
    if prompt is None:
        if cli_ctx.json_output:
            raise click.UsageError("--json needs --prompt TEXT (one question, one JSON stream)")
        _interactive(cli_ctx, job, sampling)
        return
    if not prompt.strip():
        raise click.UsageError("--prompt is empty")
    messages = [{"role": "user", "content": prompt}]
    try:
        if cli_ctx.json_output:
            _json_turn(_events(cli_ctx, job, messages, sampling), cli_ctx)
        else:
            _show_turn(cli_ctx, _events(cli_ctx, job, messages, sampling), compare)
    except KeyboardInterrupt:
        cli_ctx.err.print("stopped; the model's device is freed", style="yellow", highlight=False)
        sys.exit(EXIT_INTERRUPTED)
