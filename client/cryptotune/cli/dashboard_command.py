"""``cryptotune dashboard``: a one-time sign-in URL for the daemon's web dashboard."""

from __future__ import annotations

import click

from cryptotune.cli.completion import complete_job
from cryptotune.cli.context import CliContext, pass_cli


@click.command("dashboard")
@click.argument("job", required=False, default="", shell_complete=complete_job)
@click.option("--open", "open_browser", is_flag=True, help="Open the URL in this machine's web browser.")
@pass_cli
def dashboard(cli_ctx: CliContext, job: str, open_browser: bool) -> None:
    """Print a one-time login URL for the web dashboard (JOB's page, or the jobs list).

    The daemon must run with --http-listen HOST:PORT. The code in the URL works once, for a minute;
    the browser then keeps a session cookie.
    """
    url = cli_ctx.client().dashboard_url(job)
    if cli_ctx.json_output:
        cli_ctx.emit_json({"url": url})
    else:
        click.echo(url)
    if open_browser:
        import webbrowser

        if not webbrowser.open(url):
            from rich.text import Text

            cli_ctx.err.print(
                Text("no web browser found here: open the URL above yourself", style="yellow"),
                highlight=False,
            )
