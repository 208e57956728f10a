"""Prompt encoding per feature space, the selection rule, PromptSet files and the kNN clean-up."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from utils.errors import UserError
from utils.features_file import FeatureField
from utils.query import (
    PromptSet,
    encode_queries,
    knn_clean,
    knn_vote_bruteforce,
    load_query_vectors,
    mask_from_scores,
    parse_prompts,
    select_gaussians,
)

NAMES = ["floor", "table", "ball", "vase", "box"]
LABELS_META = {"space": "labels", "class_names": NAMES}


def test_parse_prompts():
    assert parse_prompts(" table ; chair;; ") == ["table", "chair"]
    assert parse_prompts("") == [] and parse_prompts(None) == [] and parse_prompts(" ; ") == []


def test_labels_space_names_case_and_other():
    q = encode_queries(LABELS_META, 5, PromptSet(["BALL", "Vase"]))
    assert q.positive_names == ["ball", "vase"]
    assert torch.equal(q.positive, torch.eye(5)[[2, 3]])
    # the default negative "other" = every class not named as a positive
    assert q.negative_names == ["floor", "table", "box"]
    assert torch.equal(q.negative, torch.eye(5)[[0, 1, 4]])
    assert q.threshold is None
    # explicit negatives replace "other"; "other" inside a list still expands
    q2 = encode_queries(LABELS_META, 5, PromptSet(["ball"], ["Table"]))
    assert q2.negative_names == ["table"]
    q3 = encode_queries(LABELS_META, 5, PromptSet(["ball"], ["vase", "other"]))
    assert q3.negative_names == ["vase", "floor", "table", "box"]
    # a class named both positive and negative stays positive only
    q4 = encode_queries(LABELS_META, 5, PromptSet(["ball"], ["ball", "box"]))
    assert q4.negative_names == ["box"]


def test_labels_space_unknown_name_lists_known():
    with pytest.raises(UserError) as e:
        encode_queries(LABELS_META, 5, PromptSet(["chair"]))
    msg = str(e.value)
    assert "chair" in msg and all(n in msg for n in NAMES) and "\n" not in msg


def test_empty_prompt_refused():
    with pytest.raises(UserError, match="empty prompt"):
        encode_queries(LABELS_META, 5, PromptSet([], ["ball"]))


def test_rgb_space_refuses_text_and_accepts_vectors(tmp_path):
    meta = {"space": "rgb"}
    with pytest.raises(UserError, match="no text encoder.*--query-features"):
        encode_queries(meta, 3, PromptSet(["red"]))
    # vectors from a .pt and a .npy file
    torch.save(torch.tensor([[2.0, 0.0, 0.0]]), tmp_path / "q.pt")
    np.save(tmp_path / "q.npy", np.array([[0.0, 0.0, 3.0], [0.0, 4.0, 0.0]], dtype=np.float32))
    v = load_query_vectors(tmp_path / "q.pt")
    q = encode_queries(meta, 3, PromptSet(positive_vectors=v.tolist()))
    assert torch.allclose(q.positive, torch.tensor([[1.0, 0.0, 0.0]]))
    assert q.negative.shape == (0, 3)
    assert q.threshold == 0.5  # no negatives: an absolute cut is needed
    v2 = load_query_vectors(tmp_path / "q.npy")
    q2 = encode_queries(meta, 3, PromptSet(positive_vectors=v2.tolist(), negative_vectors=[[1.0, 0.0, 0.0]], threshold=0.2))
    assert torch.allclose(q2.positive, torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]]))
    assert q2.threshold == 0.2 and q2.negative.shape == (1, 3)
    # wrong dimension, bad files
    with pytest.raises(UserError, match="dimension 3 but the features have 4"):
        encode_queries({"space": "dino:vit"}, 4, PromptSet(positive_vectors=v.tolist()))
    (tmp_path / "bad.pt").write_bytes(b"nonsense")
    with pytest.raises(UserError, match="bad.pt: cannot read query vectors"):
        load_query_vectors(tmp_path / "bad.pt")
    with pytest.raises(UserError, match="not found"):
        load_query_vectors(tmp_path / "missing.npy")


def test_text_space_uses_encoder():
    calls = []
    basis = {"cat": [1.0, 0.0, 0.0, 0.0], "dog": [0.0, 2.0, 0.0, 0.0], "other": [0.0, 0.0, 0.0, 5.0]}

    def enc(texts):
        calls.append(list(texts))
        return torch.tensor([basis[t] for t in texts])

    q = encode_queries({"space": "clip:ViT-B-32-quickgelu"}, 4, PromptSet(["cat", "dog"]), text_encoder=enc)
    assert calls == [["cat", "dog", "other"]]  # one batch; "other" is a literal text negative here
    assert torch.allclose(q.positive, torch.eye(4)[[0, 1]]) and torch.allclose(q.negative, torch.eye(4)[[3]])
    with pytest.raises(UserError, match="records no text encoder"):
        encode_queries({"space": "clip:x"}, 4, PromptSet(["cat"]))


def _numpy_rule(pos, neg, valid, thr):
    p = pos.max(axis=-1)
    m = p > (neg.max(axis=-1) if neg.shape[-1] else -np.inf)
    if thr is not None:
        m &= p >= thr
    return m & valid


@pytest.mark.parametrize("Q,thr", [(3, None), (3, 0.2), (0, 0.1)])
def test_mask_from_scores_matches_numpy(Q, thr):
    g = torch.Generator().manual_seed(0)
    pos = torch.rand(500, 2, generator=g) * 2 - 1
    neg = torch.rand(500, Q, generator=g) * 2 - 1
    valid = torch.rand(500, generator=g) > 0.2
    got = mask_from_scores(pos, neg, valid, thr)
    want = _numpy_rule(pos.numpy(), neg.numpy(), valid.numpy(), thr)
    assert got.dtype == torch.bool and np.array_equal(got.numpy(), want)
    assert 0 < int(got.sum()) < 500  # the case is not trivial
    # works on image-shaped inputs too
    assert torch.equal(mask_from_scores(pos.reshape(20, 25, 2), neg.reshape(20, 25, Q), valid.reshape(20, 25), thr), got.reshape(20, 25))


def test_select_gaussians_vs_direct_cosine():
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(400, 6, generator=g) * torch.rand(400, 1, generator=g) * 3
    weight = (torch.rand(400, generator=g) > 0.1).float()
    feats[weight == 0] = 0
    ff = FeatureField(feats, weight, {"space": "features"})
    pv = torch.randn(2, 6, generator=g)
    nv = torch.randn(3, 6, generator=g)
    q = encode_queries(ff.meta, 6, PromptSet(positive_vectors=pv.tolist(), negative_vectors=nv.tolist(), threshold=0.1))
    got = select_gaussians(ff, q).numpy()
    f = feats.double().numpy()
    fu = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    cos = lambda v: fu @ (v.double().numpy() / np.linalg.norm(v.double().numpy(), axis=1, keepdims=True)).T  # noqa: E731
    want = _numpy_rule(cos(pv), cos(nv), weight.numpy() > 0, 0.1)
    assert np.array_equal(got, want) and 0 < got.sum() < 400
    assert not got[weight.numpy() == 0].any()  # never-seen Gaussians are never selected


def test_prompt_set_round_trip_and_errors(tmp_path):
    ps = PromptSet(["table", "chair"], ["other"], [[0.1, 0.2, 0.3]], [], 0.25)
    ps.save(tmp_path / "p.json")
    back = PromptSet.load(tmp_path / "p.json")
    assert back == ps
    raw = json.loads((tmp_path / "p.json").read_text())
    assert set(raw) == {"positive_text", "negative_text", "positive_vectors", "negative_vectors", "threshold"}
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(UserError, match="bad.json: not a readable prompt set"):
        PromptSet.load(tmp_path / "bad.json")
    (tmp_path / "bad2.json").write_text(json.dumps({"positive_vectors": [[1, 2], [3]]}))
    with pytest.raises(UserError, match="equal-length"):
        PromptSet.load(tmp_path / "bad2.json")
    (tmp_path / "bad3.json").write_text(json.dumps({"positive": ["x"]}))
    with pytest.raises(UserError, match="unknown keys"):
        PromptSet.load(tmp_path / "bad3.json")
    with pytest.raises(UserError, match="not found"):
        PromptSet.load(tmp_path / "missing.json")


def test_knn_clean_hand_case():
    # a dense cluster of selected points with one unselected inside, an isolated selected point, all candidates
    g = torch.Generator().manual_seed(0)
    cluster = torch.randn(200, 3, generator=g) * 0.05
    other = torch.randn(200, 3, generator=g) * 0.05 + torch.tensor([1.0, 0, 0])
    lone = torch.tensor([[1.0, 0.0, 0.0]])  # selected, but inside the unselected cluster
    pts = torch.cat([cluster, other, lone])
    sel = torch.zeros(401, dtype=torch.bool)
    sel[:200] = True
    sel[400] = True
    keep = knn_clean(pts, sel, torch.ones(401, dtype=torch.bool), k=8)
    assert keep[:200].all() and not keep[400] and not keep[200:400].any()


@pytest.mark.parametrize("k", [1, 6, 15])
def test_knn_clean_matches_bruteforce(k):
    g = torch.Generator().manual_seed(k)
    # points on a few noisy surfaces (like a scene), selection = one region plus salt noise; some never seen
    n = 6000
    uv = torch.rand(n, 2, generator=g)
    plane = torch.randint(0, 3, (n,), generator=g)
    pts = torch.zeros(n, 3)
    pts[:, 0], pts[:, 1] = uv[:, 0], uv[:, 1]
    pts[:, 2] = plane.float() * 0.3 + 0.005 * torch.randn(n, generator=g)
    sel = (uv[:, 0] < 0.4) ^ (torch.rand(n, generator=g) < 0.05)
    cand = torch.rand(n, generator=g) > 0.05
    got = knn_clean(pts, sel, cand, k, max_ring=64)  # large ring: exact kNN
    want = knn_vote_bruteforce(pts, sel, cand, k)
    assert torch.equal(got, want)
    assert int((sel & cand).sum()) > int(got.sum()) > 0.8 * int((sel & cand & (uv[:, 0] < 0.4)).sum())
    # default ring limit: identical on this dense data
    assert torch.equal(knn_clean(pts, sel, cand, k), want)
