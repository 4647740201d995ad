"""``python -m cryptotune_daemon.worker.inference --request FILE``: the inference worker process.

Loads a job's base model and adapter once, then answers ``generate`` lines from the daemon on stdin
with ``piece`` and ``done`` lines on stdout, one turn at a time; a ``cancel`` line stops the turn
in progress at the next token. It ends when stdin closes (the daemon freed it) or on SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import sys
import threading
from pathlib import Path
from typing import IO, Any

from cryptotune_daemon.errors import CryptotuneError, ErrorCode
from cryptotune_daemon.training.model_request import GenerateParams, encode_line, read_request

log = logging.getLogger("cryptotune.inference")


class _Channel:
    """The protocol's stdout (a duplicate of fd 1; fd 1 itself goes to the log so stray prints cannot
    corrupt the protocol)."""

    def __init__(self) -> None:
        self._out: IO[bytes] = os.fdopen(os.dup(1), "wb", buffering=0)
        os.dup2(2, 1)
        self._lock = threading.Lock()

    def send(self, message: dict[str, Any]) -> None:
        with self._lock:
            self._out.write(encode_line(message))


def _read_commands(commands: queue.Queue[dict[str, Any] | None], cancels: dict[int, threading.Event]) -> None:
    """Reads stdin: cancels act at once, generate requests queue up; EOF ends the worker."""
    for raw in sys.stdin.buffer:
        try:
            command = json.loads(raw)
        except ValueError:
            log.warning("ignoring an unreadable command %r", raw[:200])
            continue
        if command.get("op") == "cancel":
            cancels.setdefault(int(command["id"]), threading.Event()).set()
        elif command.get("op") == "generate":
            cancels.setdefault(int(command["id"]), threading.Event())
            commands.put(command)
    commands.put(None)


def _serve(channel: _Channel, model: Any) -> None:
    commands: queue.Queue[dict[str, Any] | None] = queue.Queue()
    cancels: dict[int, threading.Event] = {}
    threading.Thread(target=_read_commands, args=(commands, cancels), name="stdin", daemon=True).start()
    while (command := commands.get()) is not None:
        request_id = int(command["id"])
        cancelled = cancels[request_id]
        try:
            params = GenerateParams.from_json(command["params"])

            def emit(which: str, channel_name: str, text: str, request_id: int = request_id) -> None:
                channel.send(
                    {"type": "piece", "id": request_id, "model": which, "channel": channel_name, "text": text}
                )

            for turn in model.turns(params, emit, cancelled):
                channel.send(
                    {
                        "type": "done",
                        "id": request_id,
                        "model": turn.model,
                        "reasoning": turn.reasoning,
                        "answer": turn.answer,
                        "prompt_tokens": turn.prompt_tokens,
                        "generated_tokens": turn.generated_tokens,
                        "finish_reason": turn.finish_reason,
                    }
                )
            channel.send({"type": "finished", "id": request_id})
        except CryptotuneError as error:
            channel.send(
                {"type": "error", "id": request_id, "code": error.code.value, "message": error.message}
            )
        except Exception as error:
            log.exception("generation failed")
            channel.send(
                {
                    "type": "error",
                    "id": request_id,
                    "code": ErrorCode.INTERNAL.value,
                    "message": f"generation failed: {error}",
                }
            )
        finally:
            cancels.pop(request_id, None)


def main(argv: list[str] | None = None) -> int:
    """Loads the model named by ``--request`` and serves generate requests until stdin closes."""
    parser = argparse.ArgumentParser(prog="python -m cryptotune_daemon.worker.inference", description=__doc__)
    parser.add_argument(
        "--request", required=True, type=Path, help="the model request JSON written by the daemon"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    channel = _Channel()
    try:
        request = read_request(args.request)
        from cryptotune_daemon.training.chat import ChatModel

        model = ChatModel(request)
    except CryptotuneError as error:
        channel.send({"type": "error", "code": error.code.value, "message": error.message})
        return 1
    except Exception as error:
        log.exception("loading the model failed")
        channel.send(
            {
                "type": "error",
                "code": ErrorCode.INTERNAL.value,
                "message": f"loading the model failed: {error}",
            }
        )
        return 1
    channel.send({"type": "ready", "device": str(model.device)})
    _serve(channel, model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
