"""``cryptotuned``: the daemon's command line."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import sys
from pathlib import Path

import click

from cryptotune.paths import default_socket_path, default_state_dir
from cryptotune_daemon import __version__
from cryptotune_daemon.errors import CryptotuneError
from cryptotune_daemon.faults import ENABLE_FLAG, INJECT_FLAG, FaultInjection
from cryptotune_daemon.settings import DEFAULT_RAY_NODE_WAIT_S, DEFAULT_WARM_WORKERS, DaemonSettings


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Job store, uploads and caches. Default: $CRYPTOTUNE_STATE_DIR or ~/.local/state/cryptotune.",
)
@click.option(
    "--listen",
    "listen",
    multiple=True,
    metavar="ADDR",
    help="unix:///abs/path or host:port; repeat for several. Default: a unix socket in the state dir.",
)
@click.option("--allow-remote-code", is_flag=True, help="Let configs set model.trust_remote_code: true.")
@click.option(
    "--max-upload-mb", type=click.IntRange(1), default=2048, show_default=True, help="Upload size cap."
)
@click.option(
    "--allow-output-root",
    "output_roots",
    multiple=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Job output dirs must lie under one of these (default: state dir, home, temp dir).",
)
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Bearer token TCP clients must send (default: STATE_DIR/auth_token, created with mode 0600).",
)
@click.option(
    "--tls-cert",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="PEM certificate chain for TCP listeners (required off loopback).",
)
@click.option(
    "--tls-key",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="PEM private key for --tls-cert.",
)
@click.option(
    "--tls-client-ca",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="Require client certificates signed by this CA (mutual TLS).",
)
@click.option(
    "--max-chats",
    type=click.IntRange(1, 64),
    default=2,
    show_default=True,
    help="Chats answered at once (and models kept loaded for them); more are refused until one ends.",
)
@click.option(
    "--chat-idle-timeout",
    type=click.FloatRange(0.5),
    default=300.0,
    show_default=True,
    help="Seconds an unused chat model stays loaded before its inference worker is freed.",
)
@click.option(
    "--metrics-listen",
    metavar="HOST:PORT",
    default=None,
    help="Serve Prometheus /metrics on HOST:PORT (a bare PORT: loopback, open; elsewhere: TLS + token).",
)
@click.option(
    "--http-listen",
    metavar="HOST:PORT",
    default=None,
    help="Serve the read-only web dashboard (sign in with `cryptotune dashboard`; off loopback needs TLS).",
)
@click.option(
    "--warm-workers",
    type=click.IntRange(0, 64),
    default=DEFAULT_WARM_WORKERS,
    show_default=True,
    help="Worker processes kept ready with torch/transformers/peft imported, so a single-process job "
    "starts at once (0: start every job cold).",
)
@click.option(
    "--ray-address",
    metavar="ADDRESS",
    default=None,
    help="Run jobs with parallel.nodes > 1 on this Ray cluster (auto: the cluster this machine belongs "
    "to); needs pip install 'cryptotune[ray]'. See docs/multi-node.md.",
)
@click.option(
    "--ray-node-wait-s",
    type=click.FloatRange(0.0),
    default=DEFAULT_RAY_NODE_WAIT_S,
    show_default=True,
    help="After a job on Ray lost a node: seconds its resume waits for room before it fails.",
)
@click.option(
    "--log-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    default="INFO",
    show_default=True,
)
@click.option(
    ENABLE_FLAG,
    "enable_fault_injection",
    is_flag=True,
    hidden=True,
    help="Test only: accept --inject-fault (a production daemon refuses it).",
)
@click.option(
    INJECT_FLAG,
    "inject_fault",
    multiple=True,
    hidden=True,
    metavar="KIND=VALUE",
    help="Test only: inject a fault into every job (see cryptotune_daemon/faults.py).",
)
@click.version_option(__version__, prog_name="cryptotuned")
def main(
    state_dir: Path | None,
    listen: tuple[str, ...],
    allow_remote_code: bool,
    max_upload_mb: int,
    output_roots: tuple[Path, ...],
    token_file: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_client_ca: Path | None,
    max_chats: int,
    chat_idle_timeout: float,
    metrics_listen: str | None,
    http_listen: str | None,
    warm_workers: int,
    ray_address: str | None,
    ray_node_wait_s: float,
    log_level: str,
    enable_fault_injection: bool,
    inject_fault: tuple[str, ...],
) -> None:
    """The cryptotune training daemon: owns the GPUs, runs training jobs, serves gRPC."""
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    state = (state_dir or default_state_dir()).expanduser().resolve()
    if inject_fault and not enable_fault_injection:
        click.echo(f"cryptotuned: {INJECT_FLAG} is for tests and needs {ENABLE_FLAG}", err=True)
        sys.exit(2)
    try:
        faults = FaultInjection.parse(inject_fault)
    except CryptotuneError as error:
        click.echo(f"cryptotuned: {error.message}", err=True)
        sys.exit(2)
    settings = DaemonSettings(
        state_dir=state,
        listen=listen or (f"unix://{default_socket_path(state)}",),
        allow_remote_code=allow_remote_code,
        max_upload_bytes=max_upload_mb * 1024 * 1024,
        allowed_output_roots=tuple(p.expanduser().resolve() for p in output_roots),
        token_file=token_file.expanduser().resolve() if token_file else None,
        tls_cert=tls_cert,
        tls_key=tls_key,
        tls_client_ca=tls_client_ca,
        max_chats=max_chats,
        chat_idle_timeout_s=chat_idle_timeout,
        metrics_listen=metrics_listen,
        http_listen=http_listen,
        faults=faults,
        warm_workers=warm_workers,
        ray_address=ray_address or None,
        ray_node_wait_s=ray_node_wait_s,
    )
    if ray_address and importlib.util.find_spec("ray") is None:
        click.echo(
            "cryptotuned: --ray-address needs Ray: pip install 'cryptotune[ray]' (ray[default]==2.60.0)",
            err=True,
        )
        sys.exit(2)
    try:
        from cryptotune_daemon.server import Daemon
    except ImportError as error:
        click.echo(
            f"cryptotuned: a daemon dependency is missing ({error.name}). Install the daemon with: "
            "pip install 'cryptotune[daemon]'",
            err=True,
        )
        sys.exit(2)

    try:
        asyncio.run(Daemon(settings).run_until_signalled())
    except CryptotuneError as error:
        click.echo(f"cryptotuned: {error.message}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
