"""The `openai` backend: any OpenAI-compatible chat-completions server, structured output, standard library only.

The model is asked for JSON matching `ACTION_SCHEMA` (as `response_format: json_schema`, or as a forced tool call
with mode="tools"). Whatever comes back is parsed with `json.loads` and checked by `validate_actions`; malformed
JSON, schema violations and refusals become a single `unknown` action. When the server cannot be reached (after
retries) the `rules` grammar answers instead and `notice` says so. The API key is read from the environment
(`OPENAI_API_KEY`) only.
"""

from __future__ import annotations

import json
import os
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from utils.errors import UserError

from .actions import (
    ACTION_SCHEMA, NAMED_COLORS, VIEWS, Action, ActionValidationError, unknown, validate_actions,
)
from .rules import MAX_SENTENCE_LEN, parse_rules

DEFAULT_URL = "https://api.openai.com/v1"
SCHEMA_NAME = "scene_actions"

SYSTEM_PROMPT = f"""You turn a user's sentence into edit commands for a 3D Gaussian Splatting scene viewer.
Answer only with JSON {{"actions": [...]}} matching the given schema. Allowed actions, in the order the user asked:
- set_view: view is one of {", ".join(VIEWS)}
- segment: show only objects; positive = names to show, negative = names to exclude
- delete: remove objects; positive = names, negative = exceptions
- recolor: target = names, color = a CSS colour name ({", ".join(list(NAMED_COLORS)[:16])}, ...) or #rrggbb
- transparent: target = names
- reset_segmentation, reset_colors, undo, save, help: no arguments
- unknown: message = a short polite explanation, for anything else (questions, code, shell commands, chit-chat)
Object names are lower-case nouns exactly as the user wrote them, without articles ("the wooden table" -> "wooden table").
"hide everything except X" means segment X. "start over" means reset_segmentation then reset_colors.
Never invent objects. If the request is not one of these commands, return a single unknown action."""


class _Unreachable(Exception):
    """Transport failure after all retries (connection refused, timeout, 5xx, ...)."""


def _endpoint(url: str) -> str:
    url = url.rstrip("/")
    return url if url.endswith("/chat/completions") else url + "/chat/completions"


class OpenAIAssistant:
    """OpenAI-compatible backend. url/model default to $OPENAI_BASE_URL / $OPENAI_MODEL.

    timeout: seconds per HTTP attempt; retries: extra attempts after a transport failure (with backoff).
    mode: "json_schema" (response_format) or "tools" (a forced function call).
    """

    name = "openai"

    def __init__(
        self,
        url: str | None = None,
        model: str | None = None,
        timeout: float = 20.0,
        retries: int = 2,
        mode: str = "json_schema",
        backoff: float = 0.5,
    ) -> None:
        self.url = _endpoint(url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_URL)
        if not self.url.startswith(("http://", "https://")):
            raise UserError(f"--llm-url: expected an http(s) URL, got {self.url!r}")
        self.model = model or os.environ.get("OPENAI_MODEL")
        if not self.model:
            raise UserError("--llm-model: no model name given (pass --llm-model NAME or set OPENAI_MODEL)")
        if mode not in ("json_schema", "tools"):
            raise UserError(f"openai assistant: mode must be json_schema or tools, got {mode!r}")
        if timeout <= 0 or retries < 0:
            raise UserError("openai assistant: timeout must be > 0 and retries >= 0")
        self.timeout, self.retries, self.mode, self.backoff = float(timeout), int(retries), mode, float(backoff)
        self.notice: str | None = None
        # Direct connection for loopback servers (a local llama-server / vLLM must not go through a proxy).
        host = urllib.parse.urlsplit(self.url).hostname or ""
        handlers = [urllib.request.ProxyHandler({})] if host in ("127.0.0.1", "localhost", "::1") else []
        self._opener = urllib.request.build_opener(*handlers)

    # -- request ----------------------------------------------------------------------------------------------
    def _payload(self, sentence: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": sentence}],
            "temperature": 0,
        }
        if self.mode == "json_schema":
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": SCHEMA_NAME, "strict": True, "schema": ACTION_SCHEMA},
            }
        else:
            body["tools"] = [{
                "type": "function",
                "function": {"name": SCHEMA_NAME, "description": "Scene edit actions to execute in order.",
                             "parameters": ACTION_SCHEMA, "strict": True},
            }]
            body["tool_choice"] = {"type": "function", "function": {"name": SCHEMA_NAME}}
        return body

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        """POST with timeout and retries; returns the decoded JSON response. Raises _Unreachable."""
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = os.environ.get("OPENAI_API_KEY")
        if key:
            headers["Authorization"] = f"Bearer {key}"
        data = json.dumps(body).encode()
        last = "no attempt"
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            req = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
            try:
                with self._opener.open(req, timeout=self.timeout) as resp:
                    raw = resp.read()
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code}"
                if e.code == 429 or e.code >= 500:
                    continue  # transient: retry
                raise _Unreachable(last) from None  # 4xx (bad key, bad model): retrying will not help
            except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError, OSError) as e:
                reason = getattr(e, "reason", e)
                last = "timed out" if isinstance(reason, (socket.timeout, TimeoutError)) else str(reason)
                continue
            try:
                return json.loads(raw)
            except ValueError:
                last = "response is not JSON"
                continue
        raise _Unreachable(f"{last} after {self.retries + 1} attempt(s)")

    # -- response ---------------------------------------------------------------------------------------------
    @staticmethod
    def actions_from_response(resp: Any) -> list[Action]:
        """Chat-completions response -> validated actions; anything off -> [unknown]. Never raises."""
        try:
            msg = resp["choices"][0]["message"]
        except (KeyError, IndexError, TypeError):
            return [unknown("Sorry, the language model gave an empty answer.")]
        if not isinstance(msg, dict):
            return [unknown("Sorry, the language model gave an empty answer.")]
        if msg.get("refusal"):
            return [unknown("Sorry, I can't do that in this viewer.")]
        text: Any = None
        calls = msg.get("tool_calls") or []
        if isinstance(calls, list) and calls:
            fn = calls[0].get("function", {}) if isinstance(calls[0], dict) else {}
            if fn.get("name") not in (None, SCHEMA_NAME):
                return [unknown("Sorry, the language model asked for a tool I don't have.")]
            text = fn.get("arguments")
        if text is None:
            text = msg.get("content")
        if isinstance(text, (dict, list)):  # some servers hand back parsed arguments
            obj = text
        elif isinstance(text, str) and text.strip():
            t = text.strip()
            if t.startswith("```"):  # tolerate a markdown fence around the JSON
                t = t.strip("`").removeprefix("json").strip()
            try:
                obj = json.loads(t)
            except ValueError:
                # plain prose (typically a refusal or an explanation): never executed, just "not understood"
                return [unknown("Sorry, I did not understand that as a scene command.")]
        else:
            return [unknown("Sorry, the language model gave an empty answer.")]
        try:
            return validate_actions(obj)
        except ActionValidationError as e:
            return [unknown(f"Sorry, I could not turn that into a valid command ({e}).")]

    def parse(self, sentence: str) -> list[Action]:
        self.notice = None
        if not isinstance(sentence, str) or not sentence.strip():
            return [unknown("Please type a command.")]
        if len(sentence) > MAX_SENTENCE_LEN:
            return [unknown(f"That is too long ({len(sentence)} characters); please use shorter commands.")]
        try:
            resp = self._post(self._payload(sentence))
        except _Unreachable as e:
            self.notice = f"LLM server {self.url} unreachable ({e}); used the offline rules grammar instead."
            return parse_rules(sentence)
        return self.actions_from_response(resp)

