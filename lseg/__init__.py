"""LSeg (lseg-minimal, ViT-L/16 + DPT decoder) dense CLIP features and its CLIP text tower."""

from .checkpoint import load_lseg, load_lseg_text
from .net import LSegNet
from .text import encode_text, text_features, tokenize

__all__ = ["LSegNet", "encode_text", "load_lseg", "load_lseg_text", "text_features", "tokenize"]
