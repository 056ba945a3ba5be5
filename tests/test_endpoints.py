"""ChatEndpoint (distalign.core.endpoints): retries, Retry-After, rate limit and map, by fault injection.

The real ``openai`` client talks to :class:`FaultServer`, a stub on 127.0.0.1 that answers each chat
request with the next fault of a script (HTTP 429/500/503/400, a dropped connection, a reply past
the client's timeout) and then with good replies.
"""

import json
import logging
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from distalign.core import endpoints
from distalign.core.endpoints import (
    APIKeyError,
    ChatEndpoint,
    EndpointError,
    EndpointSettings,
    retry_after_seconds,
)
from distalign.core.progress import Progress

KEY_ENV = "DISTALIGN_TEST_ENDPOINT_KEY"
MODEL = "stub-model"
FINGERPRINT = "fp_stub_0001"


class FaultServer:
    """A stub OpenAI-compatible HTTP server for injecting faults (not a model: nothing is generated).

    ``POST /v1/chat/completions`` answers with the next entry of ``script``; once the script is
    used up, every request gets a good reply. Entries: ``("status", code, headers)``, ``("drop",)``
    (close the connection without a reply), ``("slow", seconds)`` (a good reply after a delay), and
    ``("ok",)``. A good reply echoes the last user message (``"echo: <text>"``) with ``model`` and
    ``system_fingerprint`` set; a message containing ``delay=<seconds>`` is answered that much later.
    ``arrivals`` holds the monotonic time each request arrived; ``max_in_flight`` the most requests
    handled at once.
    """

    def __init__(self, script=()):
        self.script = list(script)
        self.arrivals: list[float] = []
        self.bodies: list[dict] = []
        self.in_flight = self.max_in_flight = 0
        self._lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep the test output clean
                pass

            def do_POST(self):  # noqa: N802  (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                with stub._lock:
                    stub.arrivals.append(time.monotonic())
                    stub.bodies.append(body)
                    action = stub.script.pop(0) if stub.script else ("ok",)
                    stub.in_flight += 1
                    stub.max_in_flight = max(stub.max_in_flight, stub.in_flight)
                try:
                    stub._answer(self, action, body)
                except OSError:
                    pass  # the client gave up (timeout) or we dropped the connection
                finally:
                    with stub._lock:
                        stub.in_flight -= 1

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    @property
    def count(self) -> int:
        return len(self.arrivals)

    def _answer(self, handler, action, body):
        kind = action[0]
        if kind == "drop":
            handler.close_connection = True
            handler.connection.shutdown(socket.SHUT_RDWR)
            return
        if kind == "status":
            _, code, headers = action
            self._send(handler, code, {"error": {"message": f"injected HTTP {code}", "code": code}}, headers)
            return
        text = next((m["content"] for m in reversed(body.get("messages", [])) if m["role"] == "user"), "")
        delay = action[1] if kind == "slow" else 0.0
        if "delay=" in text:
            delay = float(text.split("delay=")[1].split()[0])
        time.sleep(delay)
        reply = {
            "id": "chatcmpl-stub",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": MODEL,
            "system_fingerprint": FINGERPRINT,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": f"echo: {text}"},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
        self._send(handler, 200, reply, {})

    @staticmethod
    def _send(handler, code, payload, headers):
        data = json.dumps(payload).encode()
        handler.send_response(code)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        for k, v in headers.items():
            handler.send_header(k, v)
        handler.end_headers()
        handler.wfile.write(data)

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-test-endpoint")


def endpoint(url, **kw) -> ChatEndpoint:
    args = {
        "base_url": url,
        "model": MODEL,
        "api_key_env": KEY_ENV,
        "timeout": 5.0,
        "max_retries": 5,
        "backoff": 0.01,
        "concurrency": 4,
        "what": "test endpoint",
        "config_key": "test.llm",
    }
    args.update(kw)
    return ChatEndpoint(EndpointSettings(**args), logger=logging.getLogger("distalign.test_endpoints"))


def ask(ep, text="hello", **params):
    return ep.chat([{"role": "user", "content": text}], **params)


def test_transient_faults_are_retried_counted_and_logged(caplog):
    script = [("status", 500, {}), ("status", 503, {}), ("drop",), ("slow", 1.0)]
    caplog.set_level(logging.WARNING, logger="distalign.test_endpoints")
    with FaultServer(script) as server:
        ep = endpoint(server.url, timeout=0.4)
        reply = ask(ep, "hi", temperature=0.5, max_tokens=7, seed=3)
    assert reply.text == "echo: hi" and reply.finish_reason == "stop"
    assert reply.model == MODEL and reply.fingerprint == FINGERPRINT
    assert server.count == 5
    assert ep.stats == Counter(requests=5, transient_errors=4, retries=4)
    body = server.bodies[-1]
    assert (body["model"], body["temperature"], body["max_tokens"], body["seed"]) == (MODEL, 0.5, 7, 3)
    got = [r.getMessage() for r in caplog.records if r.name == "distalign.test_endpoints"]
    errors = ["InternalServerError", "InternalServerError", "APIConnectionError", "APITimeoutError"]
    assert got == [
        f"test endpoint request failed ({e}); retry {i}/5 in {min(0.01 * 2 ** (i - 1), 30):.1f} s"
        for i, e in enumerate(errors, 1)
    ]


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_is_honoured_instead_of_the_backoff(status, caplog):
    caplog.set_level(logging.WARNING, logger="distalign.test_endpoints")
    with FaultServer([("status", status, {"Retry-After": "1"})]) as server:
        ep = endpoint(server.url, backoff=0.01)
        assert ask(ep).text == "echo: hello"
    waited = server.arrivals[1] - server.arrivals[0]
    assert 0.95 <= waited < 3.0, waited  # the backoff alone would have waited 0.01 s
    assert ep.stats["retries"] == 1
    assert "retry 1/5 in 1.0 s, as its Retry-After header asks" in caplog.text


def test_a_long_retry_after_is_capped(monkeypatch):
    waits = []
    monkeypatch.setattr(endpoints, "sleep", waits.append)  # the endpoint's sleep only, not the server's
    with FaultServer([("status", 429, {"Retry-After": "3600"}), ("status", 500, {"Retry-After": "9"})]) as s:
        ask(endpoint(s.url, backoff=0.25))
    assert waits == [endpoints.MAX_RETRY_AFTER_S, 0.5]  # a 500's Retry-After is not read: backoff


def test_retry_after_header_forms():
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds(" 1.5 ") == 1.5
    now = 1_700_000_000.0  # Tue, 14 Nov 2023 22:13:20 GMT
    assert retry_after_seconds("Tue, 14 Nov 2023 22:13:50 GMT", now=now) == pytest.approx(30.0)
    assert retry_after_seconds("Tue, 14 Nov 2023 22:00:00 GMT", now=now) == 0.0  # in the past
    for bad in (None, "", "soon", "nan", "inf"):
        assert retry_after_seconds(bad) is None


def test_a_400_fails_at_once_naming_status_and_config_key():
    with FaultServer([("status", 400, {})]) as server:
        ep = endpoint(server.url)
        with pytest.raises(EndpointError, match=r"HTTP 400.*test\.llm\.model") as err:
            ask(ep)
    assert err.value.status == 400 and server.count == 1
    assert server.url in str(err.value) and "config key test.llm" in str(err.value)
    assert ep.stats == Counter(requests=1)


def test_retries_run_out():
    with FaultServer([("status", 500, {})] * 3) as server:
        ep = endpoint(server.url, max_retries=2)
        with pytest.raises(EndpointError, match="failed after 3 attempts: InternalServerError") as err:
            ask(ep)
    assert server.url in str(err.value) and repr(MODEL) in str(err.value)
    assert server.count == 3 and ep.stats == Counter(requests=3, transient_errors=3, retries=2)


def test_missing_or_blank_key(monkeypatch):
    for value, said in ((None, "is not set"), ("  ", "is set but empty")):
        if value is None:
            monkeypatch.delenv(KEY_ENV)
        else:
            monkeypatch.setenv(KEY_ENV, value)
        ep = endpoint("http://127.0.0.1:9/v1")
        with pytest.raises(APIKeyError, match=rf"{KEY_ENV} {said}.*config key test\.llm\.api_key_env"):
            ask(ep)
        assert ep.stats["requests"] == 0


def test_bad_settings_name_the_config_key():
    with pytest.raises(ValueError, match=r"test\.llm\.concurrency: expected an integer >= 1, got 0"):
        EndpointSettings(base_url=None, model="m", concurrency=0, config_key="test.llm")
    with pytest.raises(ValueError, match=r"test\.llm\.requests_per_second"):
        EndpointSettings(base_url=None, model="m", requests_per_second=0, config_key="test.llm")


def test_the_rate_limit_spaces_requests_over_all_threads():
    with FaultServer() as server:
        ep = endpoint(server.url, requests_per_second=10, concurrency=4)
        ask(ep, "warm-up")  # the first request of a client is slower (lazy set-up): it would skew a gap
        out = ep.map(lambda i: ask(ep, f"item {i}").text, range(6))
    assert out == [f"echo: item {i}" for i in range(6)]
    gaps = [b - a for a, b in zip(server.arrivals, server.arrivals[1:], strict=False)]
    # 0.1 s apart as sent; on arrival a gap can shrink by the scheduling jitter of a busy machine
    # (measured up to 35 ms here), while without the limit four threads arrive together (gaps ~0)
    assert len(gaps) == 6 and min(gaps) >= 0.05, gaps
    assert server.arrivals[-1] - server.arrivals[0] >= 0.55


def test_map_keeps_order_under_concurrency_and_updates_progress():
    n = 8
    progress = Progress(n, "test map", logging.getLogger("distalign.test_endpoints"), unit="item")
    with FaultServer() as server:
        ep = endpoint(server.url, concurrency=4)
        # later items answer sooner, so completion order is not item order
        out = ep.map(lambda i: ask(ep, f"item {i} delay={0.03 * (n - i)}").text, range(n), progress=progress)
    assert [o.split()[2] for o in out] == [str(i) for i in range(n)]
    assert server.max_in_flight == 4 and progress.done == n


def test_map_raises_the_first_error_and_cancels_the_rest():
    started = []

    def fn(i):
        started.append(i)
        if i == 3:
            raise ValueError("item 3 failed first")
        if i == 1:
            time.sleep(0.3)
            raise ValueError("item 1 failed later")
        time.sleep(0.1)
        return i

    ep = endpoint(None, concurrency=4)
    t0 = time.monotonic()
    with pytest.raises(ValueError, match="item 3 failed first"):
        ep.map(fn, range(40))
    assert time.monotonic() - t0 < 2.0
    assert len(started) < 20, started  # the items not yet started never ran


def test_concurrency_one_runs_in_the_calling_thread():
    ep = endpoint(None, concurrency=1)
    assert ep.map(lambda i: (i, threading.current_thread().name), [1, 2]) == [
        (1, threading.current_thread().name),
        (2, threading.current_thread().name),
    ]
