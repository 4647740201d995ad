"""Access control: unix sockets are local; TCP needs the bearer token on every RPC; TLS off loopback."""

from __future__ import annotations

import shutil
import socket
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from cryptotune import Client
from cryptotune.errors import Unauthenticated
from tests.integration.conftest import BIN, RunningDaemon, short_tmp_dir, start_daemon, stop_daemon


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def tcp_daemon() -> Iterator[tuple[RunningDaemon, str]]:
    root = short_tmp_dir()
    port = free_port()
    running = start_daemon(root / "state", "--listen", f"127.0.0.1:{port}")
    try:
        yield running, f"127.0.0.1:{port}"
    finally:
        stop_daemon(running)
        shutil.rmtree(root, ignore_errors=True)


def test_token_file_is_private_and_unix_socket_is_0660(tcp_daemon: tuple[RunningDaemon, str]) -> None:
    daemon, _ = tcp_daemon
    token_file = daemon.state_dir / "auth_token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    socket_path = Path(daemon.address.removeprefix("unix://"))
    assert stat.S_IMODE(socket_path.stat().st_mode) == 0o660
    token = token_file.read_text().strip()
    assert token not in daemon.log()


@pytest.mark.parametrize("token", [None, "wrong-token"])
def test_tcp_without_the_right_token_is_refused_everywhere(
    tcp_daemon: tuple[RunningDaemon, str], token: str | None
) -> None:
    _, address = tcp_daemon
    with Client(address, token=token or "") as client:
        client._token = token  # no fallback to the local token file for this test
        with pytest.raises(Unauthenticated):
            client.list_gpus()
        with pytest.raises(Unauthenticated):
            list(client.watch("anything"))
        with pytest.raises(Unauthenticated):
            client.upload(Path(__file__))
    metadata = [("authorization", f"Bearer {token}")] if token else []
    with grpc.insecure_channel(address) as channel:
        with pytest.raises(grpc.RpcError) as info:
            health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), metadata=metadata, timeout=5
            )
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            list(
                reflection.ServerReflectionInfo(
                    iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                    metadata=metadata,
                    timeout=5,
                )
            )
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_tcp_with_the_token_and_unix_without(tcp_daemon: tuple[RunningDaemon, str]) -> None:
    daemon, address = tcp_daemon
    token = (daemon.state_dir / "auth_token").read_text().strip()
    with Client(address, token=token) as client:
        assert client.ping() == "SERVING"
        assert client.list_gpus().recommendation.precision == "fp32"
    with Client(daemon.address) as local:
        assert local.ping() == "SERVING"


def test_non_loopback_tcp_without_tls_refuses_to_start(tmp_path: Path) -> None:
    completed = subprocess.run(  # noqa: PLW1510 - the exit code is asserted
        [str(BIN / "cryptotuned"), "--state-dir", str(tmp_path / "s"), "--listen", f"0.0.0.0:{free_port()}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 2
    assert "without TLS" in completed.stderr


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_tls_listener_with_token(tmp_path: Path) -> None:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    root = short_tmp_dir()
    port = free_port()
    daemon = start_daemon(
        root / "state", "--listen", f"127.0.0.1:{port}", "--tls-cert", str(cert), "--tls-key", str(key)
    )
    try:
        token = (daemon.state_dir / "auth_token").read_text().strip()
        with Client(f"localhost:{port}", token=token, tls_ca=cert) as client:
            assert client.list_gpus().gpus == []
        with Client(f"localhost:{port}", token="nope", tls_ca=cert) as client, pytest.raises(Unauthenticated):
            client.list_gpus()
    finally:
        stop_daemon(daemon)
        shutil.rmtree(root, ignore_errors=True)
