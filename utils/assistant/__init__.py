"""Typed sentences -> validated scene-edit actions, behind one small interface.

    assistant = make_assistant("rules")          # or "openai" / "local"
    actions = assistant.parse("show the top view and make the table red")
    [a.to_json() for a in actions]
    # [{"action": "set_view", "view": "top"}, {"action": "recolor", "target": ["table"], "color": "red"}]

Every backend returns only `Action`s that passed `validate_actions`; a request that is not understood (or unsafe)
gives a single `unknown` action, so the viewer changes nothing. `assistant.notice` holds a one-line note for the
user after a parse (e.g. "LLM server unreachable; used the offline grammar"), or None.
"""

from __future__ import annotations

from typing import Any, Protocol

from utils.errors import UserError

from .actions import (
    ACTION_NAMES, ACTION_SCHEMA, NAMED_COLORS, VIEWS, Action, ActionValidationError, actions_to_json, color_to_rgb,
    validate_actions,
)
from .rules import RulesAssistant, parse_rules

ASSISTANT_KINDS = ("rules", "openai", "local")


class Assistant(Protocol):
    name: str
    notice: str | None

    def parse(self, sentence: str) -> list[Action]:
        """Sentence -> validated actions (never raises for bad sentences; returns [unknown] instead)."""
        ...


def make_assistant(
    kind: str = "rules",
    *,
    llm_url: str | None = None,
    llm_model: str | None = None,
    llm_path: str | None = None,
    timeout: float = 20.0,
    retries: int = 2,
) -> Assistant:
    """Build a backend. kind: rules | openai | local. Raises UserError for bad options or a missing runtime."""
    if kind == "rules":
        return RulesAssistant()
    if kind == "openai":
        from .openai_backend import OpenAIAssistant

        return OpenAIAssistant(url=llm_url, model=llm_model, timeout=timeout, retries=retries)
    if kind == "local":
        from .local_backend import LocalAssistant

        return LocalAssistant(model_path=llm_path)
    raise UserError(f"--assistant: unknown backend {kind!r} (choose one of {', '.join(ASSISTANT_KINDS)})")


def assistant_from_config(cfg: Any) -> Assistant:
    """`make_assistant` from a config object with `assistant`, `llm_url`, `llm_model`, `llm_path`, `llm_timeout`,
    `llm_retries` attributes (missing ones take the defaults), e.g. viewer_with_llm.py's `ViewerConfig`."""
    llm_path = getattr(cfg, "llm_path", None)
    return make_assistant(
        getattr(cfg, "assistant", "rules"),
        llm_url=getattr(cfg, "llm_url", None),
        llm_model=getattr(cfg, "llm_model", None),
        llm_path=str(llm_path) if llm_path is not None else None,
        timeout=getattr(cfg, "llm_timeout", 20.0),
        retries=getattr(cfg, "llm_retries", 2),
    )


__all__ = [
    "ACTION_NAMES", "ACTION_SCHEMA", "ASSISTANT_KINDS", "NAMED_COLORS", "VIEWS", "Action", "ActionValidationError",
    "Assistant", "RulesAssistant", "assistant_from_config", "actions_to_json", "color_to_rgb", "make_assistant", "parse_rules",
    "validate_actions",
]
