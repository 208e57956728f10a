"""The assistant's action contract: the `Action` dataclass, its JSON schema, and validation of untrusted output.

Everything a backend produces (grammar or language model) goes through `validate_actions` before the viewer sees
it, so the viewer only ever executes a list of known actions with checked, plain-data arguments.
Nothing here is evaluated or executed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

ACTION_NAMES: tuple[str, ...] = (
    "set_view", "segment", "delete", "recolor", "transparent",
    "reset_segmentation", "reset_colors", "undo", "save", "help", "unknown",
)
VIEWS: tuple[str, ...] = ("top", "front", "back", "left", "right", "bottom", "next", "previous", "orbit")

# A fixed subset of the CSS named colours (values are the CSS ones). "grey"/"gray" both accepted.
NAMED_COLORS: dict[str, str] = {
    "black": "#000000", "white": "#ffffff", "red": "#ff0000", "green": "#008000", "blue": "#0000ff",
    "yellow": "#ffff00", "orange": "#ffa500", "purple": "#800080", "pink": "#ffc0cb", "brown": "#a52a2a",
    "grey": "#808080", "gray": "#808080", "cyan": "#00ffff", "magenta": "#ff00ff", "gold": "#ffd700",
    "silver": "#c0c0c0", "navy": "#000080", "teal": "#008080", "maroon": "#800000", "olive": "#808000",
    "lime": "#00ff00", "violet": "#ee82ee", "indigo": "#4b0082", "beige": "#f5f5dc", "turquoise": "#40e0d0",
    "lavender": "#e6e6fa", "crimson": "#dc143c", "coral": "#ff7f50", "salmon": "#fa8072", "khaki": "#f0e68c",
    "tan": "#d2b48c", "ivory": "#fffff0", "chocolate": "#d2691e", "plum": "#dda0dd", "orchid": "#da70d6",
    "aqua": "#00ffff", "fuchsia": "#ff00ff", "skyblue": "#87ceeb", "darkred": "#8b0000",
    "darkgreen": "#006400", "darkblue": "#00008b", "lightblue": "#add8e6", "lightgreen": "#90ee90",
    "lightgrey": "#d3d3d3", "lightgray": "#d3d3d3", "darkgrey": "#a9a9a9", "darkgray": "#a9a9a9",
    "lightpink": "#ffb6c1", "hotpink": "#ff69b4", "deeppink": "#ff1493", "forestgreen": "#228b22",
    "royalblue": "#4169e1", "steelblue": "#4682b4", "tomato": "#ff6347", "orangered": "#ff4500",
    "chartreuse": "#7fff00", "mintcream": "#f5fffa", "wheat": "#f5deb3", "sienna": "#a0522d",
}

MAX_ACTIONS = 8
MAX_NAMES = 16
MAX_NAME_LEN = 64
MAX_MESSAGE_LEN = 500

# Leading words that are not part of an object name ("the wooden table" -> "wooden table").
DETERMINERS: frozenset[str] = frozenset(
    "the a an this that these those my our your his her its their some any all every each".split()
)
# Names that do not pick out an object; the grammar answers these with `unknown` instead of guessing.
NON_NAMES: frozenset[str] = frozenset(
    "it them that this these those everything all anything something stuff one ones thing things".split()
)
_NAME_RE = re.compile(r"[a-z0-9](?:[a-z0-9' -]*[a-z0-9])?")
_HEX_RE = re.compile(r"#(?:[0-9a-f]{6}|[0-9a-f]{3})")

HELP_TEXT = (
    "I can: change the view ('top view', 'look from the left', 'next camera', 'orbit'); "
    "segment objects ('show only the chair but not the lamp'); delete objects ('remove the vase'); "
    "recolour ('paint the table red', 'colour the vase #00ff00'); make objects transparent "
    "('make the vase see-through'); 'reset segmentation', 'reset colours', 'start over', 'undo', "
    "'save the scene'. Several commands can be joined with 'and' / 'then'."
)
SUGGESTIONS = ("show the top view", "segment the table", "paint the vase blue", "delete the chair", "undo", "help")


class ActionValidationError(ValueError):
    """Untrusted action data does not match `ACTION_SCHEMA` (message says where)."""


@dataclass(frozen=True)
class Action:
    """One validated assistant action. Which fields matter depends on `action` (see `ACTION_SCHEMA`).

    action: one of `ACTION_NAMES`.
    view: for set_view, one of `VIEWS`.
    positive, negative: for segment/delete, lower-case object names (negative may be empty).
    target: for recolor/transparent, lower-case object names.
    color: for recolor, a key of `NAMED_COLORS` or "#rrggbb".
    message: for unknown (and help), text to show the user.
    """

    action: str
    view: str | None = None
    positive: tuple[str, ...] = ()
    negative: tuple[str, ...] = ()
    target: tuple[str, ...] = ()
    color: str | None = None
    message: str | None = None

    def to_json(self) -> dict[str, Any]:
        """Plain JSON-able dict holding only the fields that belong to this action."""
        out: dict[str, Any] = {"action": self.action}
        if self.action == "set_view":
            out["view"] = self.view
        elif self.action in ("segment", "delete"):
            out["positive"] = list(self.positive)
            out["negative"] = list(self.negative)
        elif self.action == "recolor":
            out["target"] = list(self.target)
            out["color"] = self.color
        elif self.action == "transparent":
            out["target"] = list(self.target)
        elif self.action in ("unknown", "help"):
            out["message"] = self.message
        return out


def unknown(message: str) -> Action:
    """The polite 'not understood' action (always carries suggestions)."""
    msg = message.strip()
    if "try" not in msg.lower():
        msg += " Try e.g. " + ", ".join(f"'{s}'" for s in SUGGESTIONS) + "."
    return Action("unknown", message=msg[:MAX_MESSAGE_LEN])


def help_action() -> Action:
    return Action("help", message=HELP_TEXT)


def color_to_rgb(color: str) -> tuple[float, float, float]:
    """'red' or '#rrggbb' -> RGB in [0, 1]. Raises ActionValidationError for anything else."""
    hexv = normalize_color(color)
    hexv = NAMED_COLORS.get(hexv, hexv)
    return tuple(int(hexv[i:i + 2], 16) / 255.0 for i in (1, 3, 5))  # type: ignore[return-value]


def normalize_color(color: str) -> str:
    """Canonical colour: a `NAMED_COLORS` key ("light blue" -> "lightblue") or '#rrggbb' ('#F00' -> '#ff0000')."""
    if not isinstance(color, str):
        raise ActionValidationError(f"color must be a string, got {type(color).__name__}")
    c = color.strip().lower()
    if _HEX_RE.fullmatch(c):
        return c if len(c) == 7 else "#" + "".join(ch * 2 for ch in c[1:])
    c = re.sub(r"[\s-]+", "", c)
    if c in NAMED_COLORS:
        return c
    raise ActionValidationError(f"unknown colour {color!r} (use a named colour or #rrggbb)")


def normalize_name(name: str) -> str:
    """Object name as the user wrote it, lower-case, without determiners/punctuation ("The wooden table." -> "wooden table").

    Raises ActionValidationError for empty names, pronouns ("it", "everything") and characters outside [a-z0-9' -].
    """
    if not isinstance(name, str):
        raise ActionValidationError(f"object name must be a string, got {type(name).__name__}")
    words = name.strip().lower().strip(" \t.,;:!?\"").split()
    while words and words[0] in DETERMINERS:
        words = words[1:]
    if words and words[0] == "of":  # "all of the chairs"
        words = words[1:]
        while words and words[0] in DETERMINERS:
            words = words[1:]
    n = " ".join(words)
    if not n:
        raise ActionValidationError(f"empty object name in {name!r}")
    if n in NON_NAMES:
        raise ActionValidationError(f"{n!r} does not name an object")
    if len(n) > MAX_NAME_LEN or not _NAME_RE.fullmatch(n):
        raise ActionValidationError(f"object name {name!r} has characters other than letters, digits, ' and -")
    return n


def _names(obj: dict, key: str, required: bool) -> tuple[str, ...]:
    v = obj.get(key, [] if not required else None)
    if isinstance(v, str):  # a lone string is a common model slip; accept it as a one-element list
        v = [v]
    if not isinstance(v, list):
        raise ActionValidationError(f"{obj.get('action')}: '{key}' must be a list of names")
    if required and not v:
        raise ActionValidationError(f"{obj.get('action')}: '{key}' must name at least one object")
    if len(v) > MAX_NAMES:
        raise ActionValidationError(f"{obj.get('action')}: too many names in '{key}'")
    out: list[str] = []
    for n in v:
        nn = normalize_name(n)
        if nn not in out:
            out.append(nn)
    return tuple(out)


def validate_action(obj: Any) -> Action:
    """One untrusted action dict -> Action. Raises ActionValidationError on any schema violation."""
    if not isinstance(obj, dict):
        raise ActionValidationError(f"an action must be an object, got {type(obj).__name__}")
    name = obj.get("action")
    if not isinstance(name, str) or name not in ACTION_NAMES:
        raise ActionValidationError(f"unknown action {name!r}")
    if name == "set_view":
        view = obj.get("view")
        if not isinstance(view, str) or view.strip().lower() not in VIEWS:
            raise ActionValidationError(f"set_view: 'view' must be one of {', '.join(VIEWS)}; got {view!r}")
        return Action(name, view=view.strip().lower())
    if name in ("segment", "delete"):
        pos = _names(obj, "positive", required=True)
        neg = tuple(n for n in _names(obj, "negative", required=False) if n not in pos)
        return Action(name, positive=pos, negative=neg)
    if name == "recolor":
        return Action(name, target=_names(obj, "target", required=True), color=normalize_color(obj.get("color")))
    if name == "transparent":
        return Action(name, target=_names(obj, "target", required=True))
    if name == "unknown":
        msg = obj.get("message") or "Sorry, I did not understand that."
        if not isinstance(msg, str):
            raise ActionValidationError("unknown: 'message' must be a string")
        return unknown(msg)
    if name == "help":
        return help_action()
    return Action(name)


def validate_actions(obj: Any) -> list[Action]:
    """Untrusted action list (a list of dicts, or {"actions": [...]}) -> validated Actions.

    Raises ActionValidationError on any violation; callers turn that into a single `unknown` action so a bad
    answer changes nothing. An `unknown` mixed with real actions also collapses to that `unknown`.
    """
    if isinstance(obj, dict) and "actions" in obj:
        obj = obj["actions"]
    if not isinstance(obj, list):
        raise ActionValidationError("expected a list of actions")
    if not obj:
        raise ActionValidationError("empty action list")
    if len(obj) > MAX_ACTIONS:
        raise ActionValidationError(f"too many actions ({len(obj)} > {MAX_ACTIONS})")
    acts = [validate_action(o) for o in obj]
    unk = [a for a in acts if a.action == "unknown"]
    return unk[:1] if unk else acts


def actions_to_json(actions: list[Action]) -> list[dict[str, Any]]:
    return [a.to_json() for a in actions]


def _obj(action: str, props: dict[str, Any]) -> dict[str, Any]:
    props = {"action": {"type": "string", "enum": [action]}, **props}
    return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}


_NAMES_SCHEMA = {"type": "array", "items": {"type": "string", "maxLength": MAX_NAME_LEN}, "maxItems": MAX_NAMES}
_COLOR_SCHEMA = {
    "type": "string",
    "description": "a CSS colour name (" + ", ".join(sorted(NAMED_COLORS)[:12]) + ", ...) or #rrggbb",
}

# JSON schema of the assistant's answer. Written to be accepted by OpenAI's strict structured outputs
# (every property required, no additional properties, anyOf at the item level).
ACTION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "actions": {
            "type": "array",
            "maxItems": MAX_ACTIONS,
            "items": {
                "anyOf": [
                    _obj("set_view", {"view": {"type": "string", "enum": list(VIEWS)}}),
                    _obj("segment", {"positive": _NAMES_SCHEMA, "negative": _NAMES_SCHEMA}),
                    _obj("delete", {"positive": _NAMES_SCHEMA, "negative": _NAMES_SCHEMA}),
                    _obj("recolor", {"target": _NAMES_SCHEMA, "color": _COLOR_SCHEMA}),
                    _obj("transparent", {"target": _NAMES_SCHEMA}),
                    _obj("reset_segmentation", {}),
                    _obj("reset_colors", {}),
                    _obj("undo", {}),
                    _obj("save", {}),
                    _obj("help", {}),
                    _obj("unknown", {"message": {"type": "string", "maxLength": MAX_MESSAGE_LEN}}),
                ]
            },
        }
    },
    "required": ["actions"],
    "additionalProperties": False,
}
