"""Text encoding with the CLIP text tower LSeg was trained with (open_clip tokenizer, offline)."""

from __future__ import annotations

from functools import lru_cache

import open_clip
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .net import CLIP_MODEL


@lru_cache(maxsize=1)
def _tokenizer():
    # Built-in config without an HF tokenizer -> SimpleTokenizer on the BPE vocab shipped inside the open_clip
    # wheel (open_clip/bpe_simple_vocab_16e6.txt.gz): no network.
    return open_clip.get_tokenizer(CLIP_MODEL)


def tokenize(prompts: list[str]) -> Tensor:
    """[P, 77] int64 token ids (same ids as OpenAI's clip.tokenize; long prompts truncate, ending in EOT)."""
    assert isinstance(prompts, (list, tuple)) and all(isinstance(p, str) for p in prompts), prompts
    return _tokenizer()(list(prompts)).to(torch.int64)


def _clip_of(model: nn.Module) -> nn.Module:
    """The open_clip CLIP inside an LSegNet (`clip_pretrained`), or the CLIP model itself."""
    return getattr(model, "clip_pretrained", model)


def text_features(model: nn.Module, tokens: Tensor) -> Tensor:
    """tokens: [P, 77] -> [P, 512] raw (un-normalised) CLIP text embeddings, float32."""
    clip = _clip_of(model)
    device = clip.positional_embedding.device
    with torch.inference_mode():
        return clip.encode_text(tokens.to(device)).float()


def encode_text(model: nn.Module, prompts: list[str]) -> Tensor:
    """prompts -> [P, 512] unit vectors in LSeg's (CLIP ViT-B/32) text space. `model`: LSegNet or its CLIP."""
    return F.normalize(text_features(model, tokenize(prompts)), dim=-1)
