"""Run inside a private network namespace (see test_observability.py): a daemon whose /metrics
listens on 10.250.0.1, not a loopback address. Prints one JSON line of what it saw."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
ADDRESS = "10.250.0.1"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((ADDRESS, 0))
        return int(probe.getsockname()[1])


def scrape(port: int, context: ssl.SSLContext, token: str | None) -> tuple[int, str]:
    connection = http.client.HTTPSConnection(ADDRESS, port, timeout=30, context=context)
    connection.request("GET", "/metrics", headers={"Authorization": f"Bearer {token}"} if token else {})
    response = connection.getresponse()
    return response.status, response.read().decode()


def main(cert: str, key: str) -> None:
    root = Path(tempfile.mkdtemp(prefix="ct-ns-"))
    results: dict[str, object] = {}
    base = [str(BIN / "cryptotuned"), "--state-dir", str(root / "state"), "--listen", f"unix://{root}/d.sock"]
    refused = subprocess.run(  # noqa: PLW1510 - the exit code is the result
        [*base, "--metrics-listen", f"{ADDRESS}:{free_port()}"], capture_output=True, text=True, timeout=120
    )
    results["without_tls"] = {"exit_code": refused.returncode, "stderr": refused.stderr}

    port = free_port()
    daemon = subprocess.Popen(
        [*base, "--metrics-listen", f"{ADDRESS}:{port}", "--tls-cert", cert, "--tls-key", key],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        context = ssl.create_default_context(cafile=cert)
        deadline = time.monotonic() + 120
        while True:
            try:
                results["no_token"], _ = scrape(port, context, None)
                break
            except OSError:
                if time.monotonic() > deadline or daemon.poll() is not None:
                    raise
                time.sleep(0.2)
        token = (root / "state" / "auth_token").read_text().strip()
        results["wrong_token"], _ = scrape(port, context, "not-the-token")
        results["token"], results["token_body"] = scrape(port, context, token)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=60)
    print(json.dumps(results))
    os.sync()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
