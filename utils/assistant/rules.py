"""The `rules` backend: an offline, deterministic grammar with synonyms (sentence -> validated actions).

A sentence is split into clauses at ",", ";", "and", "then", "also" and sentence dots, but only where the next
part starts a command ("delete the table and the chair" is one clause with two names; "show the top view and make
the table red" is two). Each clause is matched against small per-command patterns. If any clause is not
understood, the whole sentence becomes one `unknown` action, so a half-understood request changes nothing.
"""

from __future__ import annotations

import difflib
import re

from .actions import (
    DETERMINERS, NON_NAMES, Action, ActionValidationError, help_action, normalize_color, normalize_name, unknown,
)

MAX_SENTENCE_LEN = 500


class _NotUnderstood(Exception):
    """A clause the grammar cannot map; the message is shown to the user."""


def _alt(words: list[str]) -> str:
    """Regex alternation, longest first so multi-word synonyms win."""
    return "(?:" + "|".join(re.escape(w).replace(r"\ ", r"\s+") for w in sorted(words, key=len, reverse=True)) + ")"


_FILLER_PRE = re.compile(
    r"^(?:(?:please|pls|kindly|now|ok|okay|hey|so|also|just|then|and|can you|could you|would you|will you|"
    r"can i|could i|i want to|i wanna|i'd like to|i would like to|i want you to|i need to|let's|lets|"
    r"go ahead and|try to|assistant)[\s,]+)+"
)
_FILLER_POST = re.compile(r"(?:[\s,]+(?:please|pls|now|for me|thanks|thank you|again|too|as well))+$")

# --- views -------------------------------------------------------------------------------------------------------
_VIEW_WORDS: dict[str, str] = {}
for _view, _ws in {
    "top": ["top", "above", "up above", "overhead", "bird's eye", "birds eye", "bird's-eye", "birdseye",
            "top-down", "top down", "down"],
    "bottom": ["bottom", "below", "underneath", "beneath", "under", "up"],
    "front": ["front", "the front"],
    "back": ["back", "behind", "rear", "the back", "the rear"],
    "left": ["left", "the left", "left-hand", "left hand"],
    "right": ["right", "the right", "right-hand", "right hand"],
    "next": ["next", "following", "the next", "another"],
    "previous": ["previous", "prev", "preceding", "last", "the previous", "the last"],
}.items():
    for _w in _ws:
        _VIEW_WORDS[_w] = _view
_VIEW_VERB = _alt([
    "show", "show me", "go", "go to", "switch", "switch to", "change to", "change the view to",
    "change the camera to", "move to", "move the camera to", "jump to", "take me to", "give me", "look",
    "look at it", "look at the scene", "look at everything", "view", "view it", "see", "see it", "set the view to",
    "set view to", "set the camera to", "use", "camera", "turn to", "back to", "return to", "rotate to",
    "flip to", "go back to", "switch the camera to", "switch camera to", "show the scene", "look at the model",
])
_VIEW_RE = re.compile(
    rf"^(?:{_VIEW_VERB}\s+)?(?:(?:it|everything|the scene|the model|the view|the camera|a view|a camera|"
    rf"view|camera)\s+)?(?:from\s+)?(?:the\s+)?(?P<w>{_alt(list(_VIEW_WORDS))})"
    r"(?:[\s-]+(?:side|view|camera|cam|angle|perspective|viewpoint|shot|one|image|frame|pose|camera view))*$"
)
_ORBIT_RE = re.compile(
    r"^(?:start\s+)?(?:(?:the\s+)?camera\s+)?(?:orbit|orbiting|spin|spinning|rotate|rotating|circle|circling|"
    r"turntable|go\s+around|go\s+round|fly\s+around|turn\s+around|orbit\s+view)"
    r"(?:\s+(?:around|round|the|it|scene|model|object|objects|camera|view|everything|slowly|mode))*$"
)

# --- one-word-ish commands ---------------------------------------------------------------------------------------
_HELP_RE = re.compile(
    r"^(?:help(?: me)?|\?+|commands|what can you do|what can i (?:do|say|type|ask)|what do you do|"
    r"what are (?:the|your) commands|how does this work|how do i use (?:this|you)|"
    r"(?:show|list|give)(?: me)? (?:the |your )?(?:help|commands|options)|options|usage|instructions)$"
)
_UNDO_RE = re.compile(
    r"^(?:undo|revert|go back|oops|step back|undo (?:that|it|this|(?:the )?last(?: one| change| edit| action|"
    r" step| command)?)|revert (?:that|it|(?:the )?last (?:change|edit|action|step))|take (?:that|it) back|"
    r"cancel (?:that|(?:the )?last (?:change|edit|action)))$"
)
_RESET_SEG_RE = re.compile(
    r"^(?:(?:reset|clear|remove|undo|cancel)(?: the| all| my)? (?:segmentation|selection|selections|segment|"
    r"segments|mask|masks|highlight|highlighting|query|deletions?)|deselect(?: all| everything)?|select none|"
    r"(?:show|display|bring back|restore|unhide)(?: me)? (?:everything|all|all objects|all the objects|"
    r"the whole scene|the full scene|the entire scene|every object)(?: again| back)?)$"
)
_RESET_COL_RE = re.compile(
    r"^(?:(?:reset|clear|remove|restore|undo)(?: the| all| my)?(?: original)? (?:colou?rs?|colou?r changes|"
    r"recolou?rs?|recolou?ring|paint|transparency)|(?:restore|bring back)(?: the)? original colou?rs|"
    r"original colou?rs)$"
)
_RESET_ALL_RE = re.compile(
    r"^(?:reset|clear|restart|start over|start again|start from scratch|from scratch|start fresh|begin again|"
    r"(?:reset|clear|revert|undo) (?:everything|all|it all|the scene|all changes|all edits))$"
)
_SAVE_RE = re.compile(
    r"^(?:save|export|write|store|download)(?:\s+(?:out|it|this|that|everything|all|the|my|our|current|edited|"
    r"modified|new|final|result|results|scene|splat|splats|model|file|ply|edit|edits|changes|work|gaussians|"
    r"now|to disk|to a file))*$"
)

# --- object commands ---------------------------------------------------------------------------------------------
_SEG_VERBS = [
    "show only", "only show", "show me only", "display only", "only display", "keep only", "just keep",
    "isolate", "select", "segment", "highlight", "find", "extract", "focus on", "show me", "show", "display",
    "pick", "pick out", "locate", "where is", "where are", "only", "cut out", "mask", "query", "look for",
    "search for", "identify", "mark", "keep", "see only", "see just", "only see",
]
_DEL_VERBS = [
    "get rid of", "delete", "remove", "erase", "hide", "eliminate", "cut", "take out", "take away", "throw away",
    "throw out", "discard", "ditch", "lose", "wipe out", "wipe", "exclude",
]
_SEG_RE = re.compile(rf"^{_alt(_SEG_VERBS)}\s+(?P<x>.+)$")
_DEL_RE = re.compile(rf"^{_alt(_DEL_VERBS)}\s+(?P<x>.+)$")
_DISAPPEAR_RE = re.compile(r"^make\s+(?P<x>.+?)\s+(?:disappear|vanish|go away)$")
_EVERYTHING = r"(?:everything|all|all objects|all the objects|all other objects|the rest|anything|every object|all things|the whole scene)"
_EXCEPT = r"(?:except(?:\s+for)?|but|apart from|other than|besides|save for|excluding|aside from|but not)"
_ALL_BUT_RE = re.compile(rf"^(?P<verb>{_alt(_SEG_VERBS + _DEL_VERBS)})\s+{_EVERYTHING}\s+{_EXCEPT}\s+(?P<x>.+)$")
_NEG_SPLIT_RE = re.compile(
    r"\s+(?:but not|and not|except for|except|excluding|exclude|without|apart from|other than|besides|minus|not)\s+"
)
_TRANSPARENT_WORDS = (
    r"(?:transparent|see[- ]?through|see through|invisible|translucent|semi[- ]?transparent|ghostly|ghosted|"
    r"like a ghost|a ghost|ghost|clear|glass|glassy|faded|see-thru)"
)
_TRANSPARENT_RE = re.compile(
    rf"^(?:make|turn|set|render|let)\s+(?P<x>.+?)\s+(?:be\s+|look\s+|become\s+|to\s+)?"
    rf"(?:(?:a bit|a little|slightly|partly|partially|fully|completely|totally|very|more|somewhat)\s+)?{_TRANSPARENT_WORDS}$"
)
_GHOST_RE = re.compile(r"^(?:ghost|fade|fade out)\s+(?P<x>.+)$")
_RECOLOR_VERBS = re.compile(r"^(?P<v>paint|colou?r|recolou?r|tint|dye|make|turn|change|set|switch)\s+(?P<x>.+)$")

_ALL_VERB_WORDS = sorted({w.split()[0] for w in _SEG_VERBS + _DEL_VERBS} | {
    "paint", "colour", "color", "recolour", "recolor", "make", "turn", "change", "set", "undo", "reset", "clear",
    "save", "export", "help", "orbit", "spin", "rotate", "go", "look", "view", "next", "previous", "top", "front",
    "back", "left", "right", "bottom", "ghost", "fade", "start", "revert", "switch",
})


def _strip_fillers(s: str) -> str:
    s = s.strip(" \t.,;:!?")
    s = _FILLER_PRE.sub("", s)
    s = _FILLER_POST.sub("", s)
    return s.strip(" \t.,;:!?")


def _names(text: str) -> tuple[str, ...]:
    """'the table, the chair and the lamp' -> ('table', 'chair', 'lamp')."""
    parts = [p for p in re.split(r"\s*(?:,|;|\band\b|&|\bor\b|\bplus\b|\bas well as\b)\s*", text) if p.strip()]
    if not parts:
        raise _NotUnderstood("Please name an object, e.g. 'delete the chair'.")
    out: list[str] = []
    for p in parts:
        try:
            n = normalize_name(p)
        except ActionValidationError:
            words = p.strip().lower().split()
            if words and words[-1] in NON_NAMES or p.strip().lower() in NON_NAMES:
                raise _NotUnderstood(f"Please name the object instead of '{p.strip()}', e.g. 'delete the chair'.")
            raise _NotUnderstood(f"'{p.strip()}' is not an object name I can use.")
        w = n.split()
        if any(w[i] in DETERMINERS and w[i - 1] != "of" for i in range(1, len(w))):
            # "the top view and format the disk": an unknown verb glued onto a name list, not a noun phrase
            raise _NotUnderstood(f"Sorry, I did not understand '{p.strip()}'.")
        if n not in out:
            out.append(n)
    return tuple(out)


def _pos_neg(text: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    parts = _NEG_SPLIT_RE.split(text, maxsplit=1)
    pos = _names(parts[0])
    neg = tuple(n for n in _names(parts[1]) if n not in pos) if len(parts) > 1 else ()
    return pos, neg


def _split_colour(body: str) -> tuple[str, str] | None:
    """'the wooden table light blue' -> ('the wooden table', 'lightblue'); None if it does not end in a colour."""
    words = body.split()
    for k in (2, 1):  # two-word colours ("light blue") first
        if len(words) <= k:
            continue
        try:
            c = normalize_color(" ".join(words[-k:]))
        except ActionValidationError:
            continue
        rest = " ".join(words[:-k])
        # connectors between object and colour: "paint X in red", "change X to red", "X's colour to red"
        rest = re.sub(r"(?:'s)?(?:\s+(?:colou?r|the colou?r))?(?:\s+(?:to|into|in|with|as|a|the colou?r))*$", "", rest)
        rest = re.sub(r"^(?:the\s+)?colou?r\s+of\s+", "", rest)
        rest = re.sub(r"\s+(?:colou?r|'s colou?r)$", "", rest)
        if rest.strip():
            return rest, c
    return None


def _recolor(body: str) -> list[Action] | None:
    # "paint the table red and the chair blue": every conjunct ends in a colour -> one action each
    parts = [p for p in re.split(r"\s*(?:,|\band\b)\s*", body) if p.strip()]
    if len(parts) > 1:
        split = [_split_colour(p) for p in parts]
        if all(s is not None for s in split):
            return [Action("recolor", target=_names(x), color=c) for x, c in split]  # type: ignore[misc]
    s = _split_colour(body)
    if s is None:
        return None
    return [Action("recolor", target=_names(s[0]), color=s[1])]


def _mixed_make(verb: str, body: str) -> list[Action] | None:
    """'make the table blue and the vase transparent' -> one action per conjunct (None if not that shape)."""
    parts = [p for p in re.split(r"\s*(?:,|\band\b)\s*", body) if p.strip()]
    if len(parts) < 2:
        return None
    out: list[Action] = []
    for p in parts:
        if m := _TRANSPARENT_RE.match(f"{verb} {p}"):
            out.append(Action("transparent", target=_names(m["x"])))
        elif (sc := _split_colour(p)) is not None:
            out.append(Action("recolor", target=_names(sc[0]), color=sc[1]))
        else:
            return None
    return out


def _parse_clause(clause: str) -> list[Action]:
    """One clause (already lower-case) -> actions. Raises _NotUnderstood."""
    c = _strip_fillers(clause)
    if not c:
        raise _NotUnderstood("Please type a command.")
    if _HELP_RE.match(c):
        return [help_action()]
    if _UNDO_RE.match(c):
        return [Action("undo")]
    if _RESET_ALL_RE.match(c):
        return [Action("reset_segmentation"), Action("reset_colors")]
    if _RESET_SEG_RE.match(c):
        return [Action("reset_segmentation")]
    if _RESET_COL_RE.match(c):
        return [Action("reset_colors")]
    if _SAVE_RE.match(c):
        return [Action("save")]
    if m := _VIEW_RE.match(c):
        return [Action("set_view", view=_VIEW_WORDS[re.sub(r"\s+", " ", m["w"])])]
    if _ORBIT_RE.match(c):
        return [Action("set_view", view="orbit")]
    if m := _ALL_BUT_RE.match(c):
        keep = m["verb"].split()[0] in {w.split()[0] for w in _DEL_VERBS}
        # "hide everything except X" keeps X (= show only X); "show everything except X" drops X (= delete X)
        pos, neg = _pos_neg(m["x"])
        return [Action("segment" if keep else "delete", positive=pos, negative=neg)]
    if (m := re.match(r"^(make|turn)\s+(.+)$", c)) and (mixed := _mixed_make(m[1], m[2])):
        return mixed
    if m := (_TRANSPARENT_RE.match(c) or _GHOST_RE.match(c)):
        return [Action("transparent", target=_names(m["x"]))]
    if m := _DISAPPEAR_RE.match(c):
        return [Action("delete", positive=_names(m["x"]))]
    if m := _RECOLOR_VERBS.match(c):
        acts = _recolor(m["x"])
        if acts is not None:
            return acts
        if m["v"] in ("paint", "colour", "color", "recolour", "recolor", "tint", "dye"):
            raise _NotUnderstood("I know named colours (red, light blue, ...) and hex codes like #ff8800.")
    if m := _DEL_RE.match(c):
        pos, neg = _pos_neg(m["x"])
        return [Action("delete", positive=pos, negative=neg)]
    if m := _SEG_RE.match(c):
        pos, neg = _pos_neg(m["x"])
        return [Action("segment", positive=pos, negative=neg)]
    first = c.split()[0]
    close = difflib.get_close_matches(first, _ALL_VERB_WORDS, n=1, cutoff=0.75)
    hint = f" Did you mean '{close[0]}'?" if close and close[0] != first else ""
    raise _NotUnderstood(f"Sorry, I did not understand '{clause.strip()[:80]}'.{hint}")


def _starts_command(chunk: str) -> bool:
    c = _strip_fillers(chunk)
    if not c:
        return False
    if c.split()[0] in _ALL_VERB_WORDS:
        return True
    try:
        _parse_clause(c)
        return True
    except _NotUnderstood:
        return False


_SEP_RE = re.compile(r"(\s*(?:,|;|\band\b|\bthen\b|\balso\b|\bafter that\b|\bafterwards\b|\.(?=\s|$))\s*)")


def split_clauses(sentence: str) -> list[str]:
    """Split at separators only where the next part starts a command; other separators stay inside the clause."""
    pieces = _SEP_RE.split(sentence)
    clauses: list[str] = []
    pending_sep = ""
    for i, p in enumerate(pieces):
        if i % 2 == 1:
            pending_sep += p
            continue
        if not p.strip():
            continue
        if not clauses or _starts_command(p):
            clauses.append(p)
        else:
            clauses[-1] += (pending_sep if pending_sep.strip() else " ") + p
        pending_sep = ""
    return clauses


def parse_rules(sentence: str) -> list[Action]:
    """Sentence -> validated actions; anything not understood -> [unknown(message)] (nothing else)."""
    if not isinstance(sentence, str):
        return [unknown("Sorry, I only understand text.")]
    s = re.sub(r"\s+", " ", sentence.replace("\u2019", "'").replace("\u2018", "'")).strip().lower()
    if not s.strip(" .,;:!?"):
        return [unknown("Please type a command.")]
    if len(s) > MAX_SENTENCE_LEN:
        return [unknown(f"That is too long ({len(s)} characters); please use shorter commands.")]
    try:
        actions: list[Action] = []
        for clause in split_clauses(s):
            actions.extend(_parse_clause(clause))
    except _NotUnderstood as e:
        return [unknown(str(e))]
    if not actions:
        return [unknown("Please type a command.")]
    return actions


class RulesAssistant:
    """Offline deterministic backend."""

    name = "rules"

    def __init__(self) -> None:
        self.notice: str | None = None

    def parse(self, sentence: str) -> list[Action]:
        self.notice = None
        return parse_rules(sentence)
