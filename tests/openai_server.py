"""A small OpenAI-compatible HTTP server for tests (stdlib only, 127.0.0.1, a free port).

It serves ``GET /health``, ``GET /v1/models`` and ``POST /v1/chat/completions`` so the real
``openai`` client can talk to it. Behaviour is set by ``server.mode`` (changeable mid-test):

* ``judge``: answer the class (from ``server.classes``) named most often in the story of the last
  user message (the text between ``<story>`` markers if present), ties -> earlier class; a story
  naming none gets "Unknown".
* ``echo-paraphrase``: for a message with ``in {n} different ways``, a first quoted string
  ("context") and ``Request: ...``, reply with n distinct lines, each containing the context
  verbatim; deterministic from the message.
* ``garbage``: always a reply that is no class label.
* ``http500``: always HTTP 500.
* ``slow``: sleep ``server.delay`` seconds, then answer as ``judge``.

``server.fail_first = n`` makes the first n chat requests fail with HTTP 500 whatever the mode.
"Down" is a port with no server: :func:`free_port` / the ``down_url`` fixture.
Counters: ``server.count`` (chat requests), ``server.requests`` (their JSON bodies),
``server.auth_headers`` (Authorization headers received).

Use from a test module: ``from openai_server import openai_server, down_url  # noqa: F401``.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

OPENERS = [
    "Tell me:",
    "Quick question:",
    "I would like to know:",
    "Could you answer this:",
    "Help me out:",
    "Please consider:",
    "Here is my question:",
    "Something I wonder about:",
    "Answer briefly:",
    "Let me ask you:",
]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def paraphrase_reply(message: str) -> str:
    """The echo-paraphrase answer: n distinct lines containing the quoted context verbatim."""
    m = re.search(r"in (\d+) different ways", message)
    n = int(m.group(1)) if m else 1
    q = re.search(r'"([^"]+)"', message)
    context = q.group(1) if q else ""
    r = re.search(r"Request:\s*(.*)", message, re.DOTALL)
    request = (r.group(1).strip() if r else message.strip()).replace("\n", " ")
    if context and context not in request:
        request = f'{request} (about "{context}")'
    h = int(hashlib.sha256(message.encode()).hexdigest(), 16)
    lines = []
    for i in range(n):
        opener = OPENERS[(h + i) % len(OPENERS)]
        suffix = f" (version {i // len(OPENERS) + 1})" if i >= len(OPENERS) else ""
        lines.append(f"{opener} {request}{suffix}")
    return "\n".join(lines)


def judge_reply(message: str, classes) -> str:
    s = re.search(r"<story>(.*?)</story>", message, re.DOTALL)
    story = s.group(1) if s else message
    counts = [len(re.findall(rf"(?<!\w){re.escape(c)}(?!\w)", story, re.IGNORECASE)) for c in classes]
    if not counts or max(counts) == 0:
        return "Unknown"
    return classes[counts.index(max(counts))]


class OpenAIStubServer:
    """See the module docstring."""

    def __init__(
        self,
        mode: str = "judge",
        classes=("Male", "Female"),
        model: str = "stub-model",
        delay: float = 2.0,
        fail_first: int = 0,
    ):
        self.mode = mode
        self.classes = list(classes)
        self.model = model
        self.delay = delay
        self.fail_first = fail_first
        self.count = 0
        self.requests: list[dict] = []
        self.auth_headers: list[str | None] = []
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> OpenAIStubServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output quiet
                pass

            def _send(self, code: int, obj: dict) -> None:
                body = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):  # noqa: N802
                if self.path == "/health":
                    self._send(200, {"status": "ok"})
                elif self.path.rstrip("/") == "/v1/models":
                    self._send(
                        200,
                        {
                            "object": "list",
                            "data": [
                                {"id": server.model, "object": "model", "created": 0, "owned_by": "tests"}
                            ],
                        },
                    )
                else:
                    self._send(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})

            def do_POST(self):  # noqa: N802
                length = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(length) if length else b""
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._send(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
                    return
                try:
                    body = json.loads(raw or b"{}")
                except json.JSONDecodeError:
                    self._send(400, {"error": {"message": "invalid JSON", "type": "invalid_request_error"}})
                    return
                with server._lock:
                    server.count += 1
                    n = server.count
                    server.requests.append(body)
                    server.auth_headers.append(self.headers.get("Authorization"))
                mode = server.mode
                if n <= server.fail_first or mode == "http500":
                    self._send(500, {"error": {"message": "stub server failure", "type": "server_error"}})
                    return
                if mode == "slow":
                    time.sleep(server.delay)
                users = [m for m in body.get("messages", []) if m.get("role") == "user"]
                first, last = (users[0]["content"], users[-1]["content"]) if users else ("", "")
                if mode == "echo-paraphrase":
                    text = paraphrase_reply(last)
                elif mode == "garbage":
                    text = "Hmm, hard to say. Perhaps purple?"
                else:  # judge, slow; a re-ask is answered from the original story
                    text = judge_reply(first, server.classes)
                self._send(
                    200,
                    {
                        "id": f"chatcmpl-stub-{n}",
                        "object": "chat.completion",
                        "created": int(time.time()),
                        "model": body.get("model", server.model),
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": text},
                                "finish_reason": "stop",
                                "logprobs": None,
                            }
                        ],
                        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                    },
                )

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="openai-stub", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> OpenAIStubServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@pytest.fixture
def openai_server():
    """A running stub server (mode ``judge``); set ``.mode``/``.classes``/``.fail_first`` in the test."""
    with OpenAIStubServer() as server:
        yield server


@pytest.fixture
def down_url() -> str:
    """Base URL of a port on 127.0.0.1 where nothing listens (an endpoint that is down)."""
    return f"http://127.0.0.1:{free_port()}/v1"
