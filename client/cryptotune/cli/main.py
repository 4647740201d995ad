"""``cryptotune``: the command line. Every command calls the SDK and renders its result.

Commands import the SDK (gRPC) and rich (``render``) when they run, so ``--help`` and
``--version`` load only click.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from cryptotune import __version__
from cryptotune._lazy import LazyModule
from cryptotune.cli.chat_command import chat
from cryptotune.cli.completion import completion
from cryptotune.cli.context import CliContext, CryptotuneGroup, pass_cli
from cryptotune.cli.dashboard_command import dashboard
from cryptotune.cli.export_command import export
from cryptotune.cli.job_commands import COMMANDS
from cryptotune.paths import ADDRESS_ENV, TOKEN_ENV

if TYPE_CHECKING:
    from cryptotune.cli import render
else:
    render = LazyModule("cryptotune.cli.render")  # rich: imported when a command draws

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(cls=CryptotuneGroup, context_settings=CONTEXT_SETTINGS)
@click.option(
    "--address",
    envvar=ADDRESS_ENV,
    metavar="ADDR",
    help=f"Daemon address: unix:///path or host:port. Env: ${ADDRESS_ENV}. Default: the local user daemon.",
)
@click.option(
    "--token", envvar=TOKEN_ENV, metavar="T", help=f"Bearer token for TCP daemons. Env: ${TOKEN_ENV}."
)
@click.option(
    "--tls-ca",
    envvar="CRYPTOTUNE_TLS_CA",
    type=click.Path(dir_okay=False, exists=True),
    help="CA certificate (PEM) of a TLS daemon. Env: $CRYPTOTUNE_TLS_CA.",
)
@click.option("--json", "json_output", is_flag=True, help="Print one JSON document instead of tables.")
@click.option(
    "--no-autostart",
    is_flag=True,
    help="Never start a background daemon when none answers at the default address.",
)
@click.version_option(__version__, prog_name="cryptotune")
@click.pass_context
def cli(
    ctx: click.Context,
    address: str | None,
    token: str | None,
    tls_ca: str | None,
    json_output: bool,
    no_autostart: bool,
) -> None:
    """Fine-tune Qwen3 reasoning models on Chinese cryptography with LoRA, through the cryptotune daemon."""
    ctx.obj = CliContext(
        address=address or None,
        token=token,
        json_output=json_output,
        autostart=not no_autostart,
        tls_ca=tls_ca,
    )


@cli.command("init-config")
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("config.yaml"),
    show_default=True,
    help="Where to write the template.",
)
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
@pass_cli
def init_config(cli_ctx: CliContext, output: Path, force: bool) -> None:
    """Write a commented config template with every key at its default."""
    if output.exists() and not force:
        cli_ctx.fail(f"{output} already exists; pass --force to overwrite it or choose another --output")
    text = cli_ctx.client().config_template()
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text, encoding="utf-8")
    except OSError as error:
        cli_ctx.fail(f"cannot write {output}: {error.strerror}")
    if cli_ctx.json_output:
        cli_ctx.emit_json({"path": str(output.resolve()), "bytes": len(text.encode())})
    else:
        from rich.text import Text

        cli_ctx.out.print(Text.assemble(("✓ ", "bold green"), f"wrote {output}"))
        cli_ctx.out.print(Text(f"next: cryptotune validate-config {output}", style="dim"))


@cli.command("validate-config")
@click.argument("config_file", type=click.Path(dir_okay=False, path_type=Path))
@pass_cli
def validate_config(cli_ctx: CliContext, config_file: Path) -> None:
    """Check CONFIG_FILE: every error names its key path and line."""
    result = cli_ctx.client().validate_config(config_file)
    if cli_ctx.json_output:
        cli_ctx.emit_json(result.to_dict())
    else:
        render.validation(cli_ctx.out, str(config_file), result)
    sys.exit(0 if result.valid else 1)


@cli.command("list-gpus")
@pass_cli
def list_gpus(cli_ctx: CliContext) -> None:
    """List the daemon machine's GPUs and recommend training settings.

    A daemon attached to a Ray cluster (cryptotuned --ray-address) also lists every node of the
    cluster with its GPUs and CPUs and the jobs holding them.
    """
    result = cli_ctx.client().list_gpus()
    if cli_ctx.json_output:
        document: dict[str, Any] = {
            "gpus": [g.to_dict() for g in result.gpus],
            "recommendation": result.recommendation.to_dict(),
            "note": result.note,
        }
        if result.nodes is not None:
            document["nodes"] = [n.to_dict() for n in result.nodes]
            document["ray_address"] = result.ray_address
            document["cluster_note"] = result.cluster_note
        cli_ctx.emit_json(document)
    else:
        render.gpus(cli_ctx.out, result)


@cli.command("inspect-data")
@click.argument("data_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--format",
    "file_format",
    type=click.Choice(["json", "jsonl"]),
    default=None,
    help="Force the file format (default: detect).",
)
@click.option(
    "--sample",
    type=click.IntRange(0, 1000),
    default=0,
    show_default=True,
    help="Show N records with their exact training text.",
)
@click.option(
    "--max-seq-length", type=click.IntRange(0), default=0, help="Token limit to check (default 2048)."
)
@click.option(
    "--model",
    default="",
    help="Count tokens with this model's tokenizer: a model directory on the daemon's machine or a "
    "Hugging Face id in its cache (default: the Qwen3 tokenizer, built offline).",
)
@pass_cli
def inspect_data(
    cli_ctx: CliContext,
    data_file: Path,
    file_format: str | None,
    sample: int,
    max_seq_length: int,
    model: str,
) -> None:
    """Validate DATA_FILE record by record and show statistics with the real Qwen3 tokenizer."""
    if not data_file.is_file():
        cli_ctx.fail(f"{data_file}: no such file")
    result = cli_ctx.client().inspect_data(
        data_file, sample=sample, format=file_format, max_seq_length=max_seq_length, model=model
    )
    if cli_ctx.json_output:
        payload = result.to_dict()
        payload["crypto_terms_top"] = [
            {"term": term, "count": count} for term, count in result.crypto_terms_top
        ]
        cli_ctx.emit_json(payload)
    else:
        render.inspection(cli_ctx.out, str(data_file), result)
    sys.exit(1 if result.records_invalid or result.over_max_seq_length else 0)


for _command in (*COMMANDS, export, chat, dashboard, completion):
    cli.add_command(_command)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="cryptotune")


if __name__ == "__main__":
    main()
