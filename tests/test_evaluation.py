"""The segmentation-quality protocol: metric arithmetic, label noise, inputs, and the demo numbers."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from _segment_demo import demo_data, noisy_field
from utils.errors import UserError
from utils.evaluation import (
    IGNORE,
    Counts,
    class_masks_3d,
    class_queries,
    evaluate,
    load_labelled_views,
    relabel_noise,
)
from utils.features_file import FeatureField

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def demo(tmp_path_factory):
    return demo_data(tmp_path_factory.getbasetemp())


def test_counts_iou_and_accuracy_by_hand():
    gt = torch.tensor([[0, 0, 1, IGNORE], [1, 1, 2, 2]])
    pred = torch.tensor([[0, 1, 1, 0], [1, -1, 2, 0]])
    c = Counts.zeros(4)
    c.add_masks(torch.stack([pred == k for k in range(4)]), gt)
    c.add_labels(pred, gt)
    # class 0: TP 1 (0,0); FP (1,3) -> 1 (the ignored (0,3) does not count); FN (0,1) -> 1  => 1/3
    # class 1: TP (0,2),(1,0) = 2; FP (0,1) = 1; FN (1,1) = 1 => 2/4; class 2: TP 1, FN 1 => 1/2; class 3: absent => nan
    iou = c.iou()
    assert iou[:3] == [1 / 3, 0.5, 0.5] and math.isnan(iou[3])
    assert c.accuracy() == 4 / 7  # 7 valid pixels, 4 correct


def test_relabel_noise_fraction_is_exact_and_seeded():
    lab = np.full((40, 50), 3, np.uint8)
    lab[:10] = IGNORE
    a = relabel_noise(lab, 0.2, 5, np.random.default_rng(7))
    b = relabel_noise(lab, 0.2, 5, np.random.default_rng(7))
    assert np.array_equal(a, b) and a.dtype == np.uint8
    changed = a != lab
    # 400 pixels picked; those that drew their own label (3 for valid pixels) stay: about 1/5 of the valid picks
    assert 300 <= int(changed.sum()) <= 400
    assert set(np.unique(a[changed])) <= set(range(5))


def test_load_labelled_views_errors(demo, tmp_path):
    with pytest.raises(UserError, match="label map missing"):
        load_labelled_views(demo.cameras, tmp_path, [demo.test[0].name])
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / f"{Path(demo.test[0].name).stem}.png")
    with pytest.raises(UserError, match="label map is 10x10 but view"):
        load_labelled_views(demo.cameras, tmp_path, [demo.test[0].name])
    with pytest.raises(UserError, match="not among the scene's cameras"):
        load_labelled_views(demo.cameras, tmp_path, ["nope.png"])


def test_class_queries_per_space(demo):
    # names are matched case-insensitively and may be in another order than the features file
    q = class_queries(demo.field, ["BOX", "floor"])
    assert torch.equal(q, torch.eye(5)[[4, 0]])
    with pytest.raises(UserError, match="not in the features file"):
        class_queries(demo.field, ["chair"])
    raw = FeatureField(demo.field.features, demo.field.weight, {"space": "rgb"})
    with pytest.raises(UserError, match="has no text"):
        class_queries(raw, ["ball"])
    fake = FeatureField(demo.field.features, demo.field.weight, {"space": "clip:test"})
    enc = lambda texts: torch.eye(5)[[demo.class_names.index(t) for t in texts]] * 3  # noqa: E731
    assert torch.allclose(class_queries(fake, ["vase", "ball"], enc), torch.eye(5)[[3, 2]])


def test_class_masks_are_the_segment_rule(demo):
    masks = class_masks_3d(demo.field, class_queries(demo.field, demo.class_names))
    f = demo.field.features.double()
    seen = demo.field.weight > 0
    for c in range(5):
        others = torch.cat([f[:, :c], f[:, c + 1 :]], 1).max(1).values
        assert torch.equal(masks[c], (f[:, c] > others) & seen)
    assert int((masks.sum(0) > 1).sum()) == 0  # one class per Gaussian


def _check(res, label: str) -> None:
    print(f"\n[{label}]\n{res.table()}")
    for name, iou in zip(res.class_names, res.iou_mask):
        assert iou >= 0.9, (label, name, iou)  # extraction of each object, rendered to the held-out views
    assert res.miou_mask >= 0.95 and res.miou_rendered >= 0.95, label
    assert res.acc_rendered >= 0.98 and res.acc_mask >= 0.98, label
    assert res.acc_3d is not None and res.acc_3d >= 0.95, label
    assert all(i >= 0.85 for i in res.iou_3d), (label, res.iou_3d)


@pytest.mark.parametrize("noise", [0.0, 0.2])
def test_demo_quality_on_held_out_views(demo, noise, tmp_path_factory):
    """Demo: lift the TRAIN label maps (optionally 20% relabelled at random), evaluate on the TEST views."""
    ff = demo.field if noise == 0 else noisy_field(tmp_path_factory.getbasetemp(), noise)
    views = load_labelled_views(demo.cameras, demo.root / "labels", [c.name for c in demo.test])
    assert not {v.camera.name for v in views} & {c.name for c in demo.train}
    plain = evaluate(demo.splats, ff, demo.class_names, views, demo.labels)
    _check(plain, f"noise {noise}, no clean-up")
    cleaned = evaluate(demo.splats, ff, demo.class_names, views, demo.labels, clean_knn=8)
    _check(cleaned, f"noise {noise}, kNN clean-up K=8")
    assert all(b <= a for a, b in zip(plain.num_selected, cleaned.num_selected))  # clean-up only removes
    assert cleaned.num_selected != plain.num_selected  # ... and it did something
    assert plain.num_views == 3


def test_evaluation_detects_a_bad_field(demo):
    """A test that can fail: the same protocol on a field with two classes swapped scores badly for them."""
    f = demo.field.features.clone()
    f[:, [2, 3]] = f[:, [3, 2]]
    bad = FeatureField(f, demo.field.weight, demo.field.meta)
    views = load_labelled_views(demo.cameras, demo.root / "labels", [c.name for c in demo.test])
    res = evaluate(demo.splats, bad, demo.class_names, views, demo.labels)
    assert res.iou_mask[2] < 0.1 and res.iou_mask[3] < 0.1 and res.iou_rendered[2] < 0.1
    assert res.iou_mask[0] > 0.95  # the others are unaffected


def test_benchmark_table_and_json(demo, tmp_path, monkeypatch):
    """benchmarks/eval_segmentation.py on a user scene (non-demo path): table printed, JSON written."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import eval_segmentation as bench
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    from utils.scene_args import SceneArgs

    out = tmp_path / "eval.json"
    args = bench.Args(
        scene=SceneArgs(checkpoint=demo.root / "ckpts" / "ckpt_demo.pt", data_dir=demo.root),
        features=demo.features_path, labels_dir=demo.root / "labels", split=demo.root / "split.json",
        gaussian_labels=demo.root / "gaussian_labels.pt", clean_knn=4, out=out,
    )
    rows = bench.main(args)
    assert [r.clean_knn for r in rows] == [0, 4]
    doc = json.loads(out.read_text())
    assert doc["scene"] == "demo" and len(doc["rows"]) == 2
    assert doc["rows"][0]["miou_mask"] == pytest.approx(rows[0].result.miou_mask)
    assert "mIoU render" in bench.format_rows(rows)
    with pytest.raises(UserError, match="held-out views"):
        bench.main(bench.Args(scene=args.scene, features=demo.features_path, labels_dir=demo.root / "labels"))
