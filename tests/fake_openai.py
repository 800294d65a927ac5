"""A real HTTP server that speaks OpenAI's chat-completions protocol, for tests.

The model is the one third party we cannot reach from here, so tests talk to this instead:
the SDK, its HTTP client, streaming and error handling all run for real. Each request takes
the next scripted turn (or echoes the last user message when the script is empty) and is
recorded for assertions.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Turn:
    """One scripted answer. `status` other than 200 answers an error document."""

    text: str = ""
    tool_calls: list[tuple[str, Any]] = field(default_factory=list)  # (name, arguments)
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0  # before answering
    chunk_delay_s: float = 0.0  # between streamed chunks
    chunk_size: int = 3  # characters per streamed text chunk
    usage: tuple[int, int] = (11, 7)
    finish_reason: str | None = None  # default: "tool_calls" when it has some, else "stop"
    # The connection closes after the text and tool calls, before the finish reason.
    ends_early: bool = False
    # The ids of calls by their position (default: fresh random ones).
    tool_call_ids: dict[int, str] | None = None
    # A broken provider: these bytes as the whole answer (of `status`), with this type.
    raw: bytes | None = None
    raw_type: str = "text/event-stream"


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A worker that hung up (a cut answer, a job cancelled mid-stream) is part of the
        # test, not a traceback in its output; anything else still prints.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class FakeOpenAI:
    def __init__(self) -> None:
        self.script: deque[Turn] = deque()
        self.requests: list[dict[str, Any]] = []
        self.chunks_sent = 0  # streamed chunks written, of every answer
        self._lock = threading.Lock()
        handler = type("Handler", (_Handler,), {"fake": self})
        self._server = _Server(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> FakeOpenAI:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def then(self, *turns: Turn) -> FakeOpenAI:
        self.script.extend(turns)
        return self

    def next_turn(self, request: dict[str, Any]) -> Turn:
        with self._lock:
            self.requests.append(request)
            if self.script:
                return self.script.popleft()
        last_user = next(
            (
                m.get("content")
                for m in reversed(request.get("messages", []))
                if m["role"] == "user"
            ),
            "",
        )
        return Turn(text=f"echo: {last_user}")


class _Handler(BaseHTTPRequestHandler):
    fake: FakeOpenAI
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:  # keep test output quiet
        return None

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        request = json.loads(self.rfile.read(length) or b"{}")
        request["_authorization"] = self.headers.get("Authorization")
        request["_accept_encoding"] = self.headers.get("Accept-Encoding")
        if not self.path.endswith("/chat/completions"):
            return self._send_json(
                404, {"error": {"message": "not found", "type": "invalid_request_error"}}
            )
        turn = self.fake.next_turn(request)
        if turn.delay_s:
            time.sleep(turn.delay_s)
        if turn.raw is not None:
            return self._send_raw(turn)
        if turn.status != 200:
            body = {"error": {"message": f"scripted {turn.status}", "type": "server_error"}}
            return self._send_json(turn.status, body, turn.headers)
        if request.get("stream"):
            return self._stream(request, turn)
        return self._send_json(200, _completion(request, turn))

    def _send_raw(self, turn: Turn) -> None:
        self.send_response(turn.status)
        self.send_header("Content-Type", turn.raw_type)
        self.send_header("Content-Length", str(len(turn.raw or b"")))
        for name, value in turn.headers.items():  # a Content-Encoding of the raw bytes
            self.send_header(name, value)
        self.end_headers()
        # The client may stop reading (an answer past its bound).
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.wfile.write(turn.raw or b"")

    def _send_json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _stream(self, request: dict[str, Any], turn: Turn) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        base = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": request.get("model", "fake"),
        }

        def send(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> None:
            chunk = {
                **base,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                **extra,
            }
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()
            self.fake.chunks_sent += 1
            if turn.chunk_delay_s:
                time.sleep(turn.chunk_delay_s)

        try:
            send({"role": "assistant", "content": ""})
            for start in range(0, len(turn.text), turn.chunk_size):
                send({"content": turn.text[start : start + turn.chunk_size]})
            for index, (name, arguments) in enumerate(turn.tool_calls):
                text = arguments if isinstance(arguments, str) else json.dumps(arguments)
                call_id = (turn.tool_call_ids or {}).get(index) or f"call_{uuid.uuid4().hex[:8]}"
                send(
                    {
                        "tool_calls": [
                            {
                                "index": index,
                                "id": call_id,
                                "type": "function",
                                "function": {"name": name, "arguments": ""},
                            }
                        ]
                    }
                )
                half = len(text) // 2
                for piece in (text[:half], text[half:]):
                    send({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
            if turn.ends_early:
                return
            send({}, _finish_reason(turn))
            prompt, completion = turn.usage
            usage = {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            }
            self.wfile.write(
                f"data: {json.dumps({**base, 'choices': [], 'usage': usage})}\n\n".encode()
            )
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client closed the stream (cancelled or timed out)


def _finish_reason(turn: Turn) -> str:
    return turn.finish_reason or ("tool_calls" if turn.tool_calls else "stop")


def _completion(request: dict[str, Any], turn: Turn) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": turn.text or None}
    if turn.tool_calls:
        message["tool_calls"] = [
            {
                "id": f"call_{i}",
                "type": "function",
                "function": {"name": name, "arguments": json.dumps(arguments)},
            }
            for i, (name, arguments) in enumerate(turn.tool_calls)
        ]
    prompt, completion = turn.usage
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": request.get("model", "fake"),
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": _finish_reason(turn),
            }
        ],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        },
    }
