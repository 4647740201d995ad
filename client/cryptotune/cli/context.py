"""Global CLI options, the SDK client they configure, and uniform error handling.

Importing this module costs only click: the SDK (and with it gRPC) loads when a command asks for
the client, rich when something is printed through ``out``/``err``.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

import click

from cryptotune.errors import CryptotuneError, DaemonUnavailable

if TYPE_CHECKING:
    from rich.console import Console

    from cryptotune.client import Client

EXIT_FAILURE = 1
EXIT_UNAVAILABLE = 3


@dataclass
class CliContext:
    """What the global options say, plus the lazily connected client."""

    address: str | None
    token: str | None
    json_output: bool
    autostart: bool
    tls_ca: str | None = None
    _client: Client | None = None
    _out: Console | None = None
    _err: Console | None = None

    @property
    def out(self) -> Console:
        """The rich console on stdout (made on first use)."""
        if self._out is None:
            from rich.console import Console

            self._out = Console(soft_wrap=True)
        return self._out

    @property
    def err(self) -> Console:
        """The rich console on stderr (made on first use)."""
        if self._err is None:
            from rich.console import Console

            self._err = Console(stderr=True, soft_wrap=True)
        return self._err

    def client(self) -> Client:
        """The SDK client, connected to a daemon (auto-started if allowed)."""
        if self._client is None:
            from cryptotune.autostart import ensure_daemon
            from cryptotune.client import Client

            client = Client(self.address, self.token, tls_ca=self.tls_ca)

            def ping() -> bool:
                try:
                    client.ping(timeout=2.0)
                except DaemonUnavailable:
                    return False
                return True

            def announce(line: str) -> None:
                from rich.text import Text

                self.err.print(Text(line, style="dim"), highlight=False)

            ensure_daemon(client.address, ping, autostart=self.autostart, announce=announce)
            self._client = client
        return self._client

    def emit_json(self, value: Any) -> None:
        """Prints one JSON document on stdout."""
        click.echo(json.dumps(value, ensure_ascii=False, indent=2))

    def fail(self, message: str, code: str = "", exit_code: int = EXIT_FAILURE) -> NoReturn:
        """Reports an error (JSON on stdout with --json, else red on stderr) and exits."""
        if self.json_output:
            self.emit_json({"error": {"code": code, "message": message}})
        else:
            from rich.text import Text

            self.err.print(Text.assemble(("error: ", "bold red"), message), highlight=False)
        sys.exit(exit_code)


JSON_HELP = "Print JSON instead of tables (same as `cryptotune --json ...`)."


def _enable_json(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    # The group's callback has built the CliContext before any subcommand parses its options.
    cli = ctx.find_object(CliContext)
    if value and cli is not None:
        cli.json_output = True


def json_option() -> click.Option:
    """A subcommand's ``--json`` flag: the same switch as the group's ``--json``."""
    return click.Option(
        ["--json", "json_output"], is_flag=True, expose_value=False, callback=_enable_json, help=JSON_HELP
    )


class CryptotuneGroup(click.Group):
    """A Click group that turns SDK errors into clean messages and exit codes, never tracebacks.

    Every subcommand also accepts ``--json`` after its name (``cryptotune status --json``), as users
    write it, with the same effect as the group option.
    """

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        if not any(param.name == "json_output" for param in cmd.params):
            cmd.params.append(json_option())
        super().add_command(cmd, name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CryptotuneError as error:
            cli: CliContext | None = ctx.find_object(CliContext)
            exit_code = EXIT_UNAVAILABLE if isinstance(error, DaemonUnavailable) else EXIT_FAILURE
            if cli is None:
                click.echo(f"error: {error.message}", err=True)
                sys.exit(exit_code)
            cli.fail(error.message, error.code, exit_code)


pass_cli = click.make_pass_decorator(CliContext)
