"""The openai backend's limits against a real local HTTP endpoint: an OpenAI-compatible chat server
(the standard library's) that answers 429 or 503 before it answers, and counts the requests it
holds at once. Calls running at once on one engine share its bound on requests in flight, and a
rate-limited or failing request is retried with backoff until it is answered."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pyarrow as pa
import pytest

from router import schema as S

pytest.importorskip("openai", reason="needs the openai package")

from router.backends.generators import OpenAIGenerator  # noqa: E402

pytestmark = pytest.mark.timeout(120)

MODELS = {"api-model": {"max_tokens": 16, "temperature": 0.0, "input_price": 1.0, "output_price": 2.0}}


class Endpoint(ThreadingHTTPServer):
    """Answers each prompt's first request with 429 (rate limited) and its second, for prompts
    that name it, with 503; then a completion. Records the most requests it held at once."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.lock = threading.Lock()
        self.seen: dict[str, int] = {}
        self.holding = 0
        self.most = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class Handler(BaseHTTPRequestHandler):
    server: Endpoint

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_POST(self) -> None:
        import time

        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = body["messages"][0]["content"]
        srv = self.server
        with srv.lock:
            srv.seen[prompt] = tries = srv.seen.get(prompt, 0) + 1
            srv.holding += 1
            srv.most = max(srv.most, srv.holding)
        time.sleep(0.02)  # long enough for requests to overlap
        if tries == 1:
            reply = (429, {"error": {"message": "slow down", "type": "rate_limit"}}, {"retry-after-ms": "10"})
        elif tries == 2 and "flaky" in prompt:
            reply = (503, {"error": {"message": "busy", "type": "server_error"}}, {"retry-after-ms": "10"})
        else:
            words = prompt.split()
            reply = (200, {
                "id": "c1", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": " ".join(reversed(words))}}],
                "usage": {"prompt_tokens": len(words) + 5, "completion_tokens": len(words),
                          "total_tokens": 2 * len(words) + 5},
            }, None)  # fmt: skip
        # The request stops being held before its answer leaves: once the client has the answer it
        # may send its next request, which must not count as overlapping this one.
        with srv.lock:
            srv.holding -= 1
        self._send(*reply)

    def _send(self, code: int, payload: dict, headers: dict | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def endpoint():
    srv = Endpoint()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def batch(prompts: list[str]) -> pa.Table:
    n = len(prompts)
    return pa.table({S.ID: [f"r{i}" for i in range(n)], S.PROMPT: prompts, S.MODEL: ["api-model"] * n})


def test_calls_at_once_share_the_bound_and_rate_limits_are_retried(endpoint):
    gen = OpenAIGenerator("served-name", models=MODELS, base_url=endpoint.url, concurrency=3)
    calls = [batch([f"call {c} row {i}" + (" flaky" if i % 4 == 0 else "") for i in range(8)]) for c in range(3)]
    try:
        with ThreadPoolExecutor(3) as pool:  # as an engine actor runs calls at once
            out = list(pool.map(gen, calls))
    finally:
        gen.close()

    rows = [r for t in out for r in t.to_pylist()]
    assert len(rows) == 24 and all(r[S.STATUS] == S.OK for r in rows), [r[S.ERROR] for r in rows]
    for r in rows:
        assert r[S.RESPONSE] == " ".join(reversed(r[S.PROMPT].split()))
        words = len(r[S.PROMPT].split())
        assert (r[S.INPUT_TOKENS], r[S.OUTPUT_TOKENS]) == (words + 5, words)
        assert r[S.ACTUAL_COST] == pytest.approx(((words + 5) * 1.0 + words * 2.0) / 1e6)
    # Every row was refused once (429), the flaky ones twice (429, then 503), and all were answered.
    assert all(endpoint.seen[r[S.PROMPT]] == (3 if "flaky" in r[S.PROMPT] else 2) for r in rows)
    # Three calls at once, yet never more than `concurrency` requests at the endpoint.
    assert 1 < endpoint.most <= 3


def test_an_endpoint_that_keeps_failing_fails_its_rows_alone(endpoint):
    gen = OpenAIGenerator("served-name", models=MODELS, base_url=endpoint.url, concurrency=2, max_retries=0)
    try:
        rows = gen(batch(["first try is refused", "so is this one"])).to_pylist()
    finally:
        gen.close()
    assert [r[S.STATUS] for r in rows] == [S.GENERATION_ERROR] * 2
    assert all("429" in r[S.ERROR] or "RateLimit" in r[S.ERROR] for r in rows)
