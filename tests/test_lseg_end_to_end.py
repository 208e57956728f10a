"""End to end on the demo scene with random LSeg weights: backproject.py --features lseg, then segment.py queries it.

The numbers are meaningless with random weights: this checks the plumbing (checkpoint → source → lifting → file →
text encoder chosen from the file's meta → 3D mask) and the shapes.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import backproject
import segment
from lseg import LSegNet
from utils.scene_args import SceneArgs
from utils.feature_sources.registry import SourceArgs


@pytest.mark.slow
def test_backproject_lseg_then_segment(tmp_path, monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    torch.manual_seed(0)
    ckpt = tmp_path / "lseg_minimal_e200.ckpt"
    torch.save({"state_dict": {k: v.half() if v.is_floating_point() else v for k, v in LSegNet().state_dict().items()}}, ckpt)
    results = tmp_path / "results"
    out = backproject.main(
        backproject.Args(
            scene=SceneArgs(demo=True),
            sources=SourceArgs(lseg_checkpoint=ckpt, lseg_short_side=64),
            features="lseg",
            results_dir=results,
            quiet=True,
        )
    )
    assert out == results / "features_lseg.pt"
    saved = torch.load(out, weights_only=True)
    n = saved["meta"]["num_gaussians"]
    assert saved["features"].shape == (n, 512) and saved["weight"].shape == (n,)
    assert torch.isfinite(saved["features"]).all()
    assert saved["meta"]["space"] == "clip:ViT-B-32-quickgelu"
    assert saved["meta"]["text_encoder"]["kind"] == "lseg"
    seen = saved["weight"] > 0
    assert seen.float().mean() > 0.9
    # Lifted from unit per-pixel features, seen Gaussians' features have norm <= 1 and > 0.
    norms = saved["features"][seen].norm(dim=1)
    assert (norms <= 1 + 1e-4).all() and (norms > 0).all()

    res = segment.main(
        segment.Args(scene=SceneArgs(demo=True), features=out, prompt="ball", out=tmp_path / "seg", max_views=2,
                     max_side=160, quiet=True)
    )
    mask = torch.load(res.out_dir / "mask.pt", weights_only=True)
    assert mask.dtype == torch.bool and mask.shape == (n,)
    assert (res.out_dir / "extracted.ply").exists() and (res.out_dir / "deleted.pt").exists()
