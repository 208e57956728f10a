"""The `openai` assistant against a real HTTP server on 127.0.0.1 (ephemeral port) started by the test.

This is a PROTOCOL test: the server is a minimal `http.server` that replays scripted chat-completions responses
(shaped like OpenAI's: json_schema content, tool calls, refusals, prose, broken JSON, errors, stalls). It checks
what goes over the wire and how every answer is handled; it says nothing about how well a real model understands
sentences (see benchmarks/bench_assistant.py for that).
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from utils.assistant import ACTION_SCHEMA, make_assistant
from utils.assistant.openai_backend import OpenAIAssistant
from utils.errors import UserError


def _content(obj) -> dict:
    return {"choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": obj if isinstance(obj, str) else json.dumps(obj)}}]}


def _tool(obj) -> dict:
    call = {"id": "call_1", "type": "function",
            "function": {"name": "scene_actions", "arguments": json.dumps(obj)}}
    return {"choices": [{"index": 0, "finish_reason": "tool_calls",
                         "message": {"role": "assistant", "content": None, "tool_calls": [call]}}]}


class FakeServer:
    """Replays `script` entries in order, one per request: (delay_s, status, body). Records requests."""

    def __init__(self):
        self.script: list[tuple[float, int, object]] = []
        self.requests: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # keep pytest output clean
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                delay, status, payload = outer.script.pop(0) if outer.script else (0.0, 500, {"error": "no script"})
                time.sleep(delay)
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # client already timed out
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("OPENAI_MODEL", raising=False)
    with FakeServer() as s:
        yield s


def _asst(server, **kw) -> OpenAIAssistant:
    kw.setdefault("timeout", 2.0)
    kw.setdefault("retries", 1)
    kw.setdefault("backoff", 0.01)
    return OpenAIAssistant(url=server.url, model="test-model", **kw)


GOOD = {"actions": [{"action": "set_view", "view": "top"},
                    {"action": "recolor", "target": ["The Table"], "color": "red"}]}
GOOD_JSON = [{"action": "set_view", "view": "top"}, {"action": "recolor", "target": ["table"], "color": "red"}]


def test_json_schema_response_and_request_shape(server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-123")
    server.script = [(0, 200, _content(GOOD))]
    a = _asst(server)
    assert [x.to_json() for x in a.parse("show the top view and make the table red")] == GOOD_JSON
    assert a.notice is None
    (req,) = server.requests
    assert req["path"] == "/v1/chat/completions"
    assert req["headers"]["Authorization"] == "Bearer sk-test-123"
    body = req["body"]
    assert body["model"] == "test-model" and body["temperature"] == 0
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["schema"] == ACTION_SCHEMA
    assert body["messages"][-1] == {"role": "user", "content": "show the top view and make the table red"}


def test_no_key_no_auth_header(server):
    server.script = [(0, 200, _content(GOOD))]
    _asst(server).parse("x y")
    assert "Authorization" not in server.requests[0]["headers"]


def test_tool_call_response(server):
    server.script = [(0, 200, _tool({"actions": [{"action": "delete", "positive": ["ball"], "negative": []}]}))]
    a = _asst(server, mode="tools")
    assert [x.to_json() for x in a.parse("get rid of the ball")] == [
        {"action": "delete", "positive": ["ball"], "negative": []}]
    body = server.requests[0]["body"]
    assert body["tools"][0]["function"]["parameters"] == ACTION_SCHEMA
    assert body["tool_choice"]["function"]["name"] == "scene_actions"


@pytest.mark.parametrize("payload", [
    _content('{"actions": [{"action": "set_view", "view": "top"}'),           # truncated JSON
    _content("Sure! I'll make the table red for you."),                      # prose
    _content({"actions": [{"action": "rm_rf", "path": "/"}]}),               # unknown action
    _content({"actions": [{"action": "set_view", "view": 3}]}),              # wrong type
    _content({"actions": [{"action": "segment", "positive": "a;b|c"}]}),     # unsafe name
    _content({"actions": [{"action": "recolor", "target": ["t"], "color": "url(x)"}]}),
    _content({"actions": []}),
    _tool({"actions": [{"action": "delete"}]}),                              # missing field
    {"choices": []},
    {"choices": [{"message": {"role": "assistant", "content": None,
                              "refusal": "I'm sorry, I can't help with that."}}]},  # refusal
    {"choices": [{"message": {"role": "assistant", "content": "I'm sorry, I can't help with that."}}]},
])
def test_bad_model_output_is_unknown(server, payload):
    server.script = [(0, 200, payload)]
    a = _asst(server)
    acts = a.parse("do something")
    assert len(acts) == 1 and acts[0].action == "unknown" and acts[0].message
    assert a.notice is None and len(server.requests) == 1  # answered, so no retry and no fallback


def test_timeout_then_retry_succeeds(server):
    server.script = [(1.5, 200, _content(GOOD)), (0, 200, _content(GOOD))]
    a = _asst(server, timeout=0.5, retries=1)
    assert [x.to_json() for x in a.parse("top view and red table")] == GOOD_JSON
    assert len(server.requests) == 2 and a.notice is None


def test_server_error_then_retry_succeeds(server):
    server.script = [(0, 503, {"error": "busy"}), (0, 429, {"error": "slow down"}), (0, 200, _content(GOOD))]
    a = _asst(server, retries=2)
    assert [x.to_json() for x in a.parse("top view and red table")] == GOOD_JSON
    assert len(server.requests) == 3


def test_persistent_timeout_falls_back_to_rules(server):
    server.script = [(1.0, 200, _content(GOOD))] * 2
    a = _asst(server, timeout=0.3, retries=1)
    acts = a.parse("paint the vase blue")
    assert [x.to_json() for x in acts] == [{"action": "recolor", "target": ["vase"], "color": "blue"}]
    assert len(server.requests) == 2
    assert a.notice and "unreachable" in a.notice and "timed out" in a.notice


def test_auth_error_is_not_retried_and_falls_back(server):
    server.script = [(0, 401, {"error": {"message": "bad key"}})]
    a = _asst(server, retries=3)
    assert a.parse("undo")[0].action == "undo"
    assert len(server.requests) == 1 and "HTTP 401" in a.notice


def test_unreachable_server_falls_back_with_notice(server):
    url = server.url
    server.httpd.server_close()  # nothing listens on that port any more
    a = OpenAIAssistant(url=url, model="m", timeout=1.0, retries=1, backoff=0.01)
    acts = a.parse("go to the next camera")
    assert [x.to_json() for x in acts] == [{"action": "set_view", "view": "next"}]
    assert "unreachable" in a.notice and "rules" in a.notice


def test_fallback_keeps_rules_safety(server):
    server.httpd.server_close()
    a = OpenAIAssistant(url=server.url, model="m", timeout=1.0, retries=0)
    assert [x.action for x in a.parse("rm -rf /")] == ["unknown"]


def test_config_from_env_and_errors(monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:1/v1/")
    monkeypatch.setenv("OPENAI_MODEL", "env-model")
    a = make_assistant("openai")
    assert a.url == "http://127.0.0.1:1/v1/chat/completions" and a.model == "env-model"
    monkeypatch.delenv("OPENAI_MODEL")
    with pytest.raises(UserError, match="--llm-model"):
        make_assistant("openai")
    with pytest.raises(UserError, match="--llm-url"):
        make_assistant("openai", llm_url="ftp://x", llm_model="m")
    with pytest.raises(UserError, match="--assistant"):
        make_assistant("gpt")


def test_no_api_key_flag():
    import dataclasses

    import viewer_with_llm

    names = {f.name for f in dataclasses.fields(viewer_with_llm.ViewerConfig)}
    assert not any("key" in n for n in names)
