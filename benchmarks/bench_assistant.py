"""Accuracy of each assistant backend on the phrasing table of tests/test_assistant_rules.py.

    python benchmarks/bench_assistant.py --backends rules local [--limit 20]
    python benchmarks/bench_assistant.py --backends openai --llm-url http://127.0.0.1:8000/v1 --llm-model NAME

An answer counts as correct only if the whole structured action list equals the expected one (help/unknown
messages are compared by action only). Nonsense inputs count as correct when the answer is a single `unknown`.
Writes benchmarks/results/assistant_<backend>.json (atomically) and prints a summary line per backend.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import tyro

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from utils.assistant import make_assistant  # noqa: E402
from utils.errors import run_cli  # noqa: E402


def _load_table():
    spec = importlib.util.spec_from_file_location("_phrasings", ROOT / "tests" / "test_assistant_rules.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod.PHRASINGS + mod.MULTI, mod.NONSENSE


def _strip(acts: list[dict]) -> list[dict]:
    return [{k: v for k, v in a.items() if k != "message"} for a in acts]


@dataclass
class BenchConfig:
    backends: list[str] = field(default_factory=lambda: ["rules"])
    """Backends to measure: rules, openai, local."""
    limit: int | None = None
    """Use only the first N phrasings (and N nonsense inputs) - the local model is slow on 2 cores."""
    llm_url: str | None = None
    llm_model: str | None = None
    llm_path: str | None = None
    out_dir: Path = ROOT / "benchmarks" / "results"


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def bench(cfg: BenchConfig) -> dict[str, dict]:
    table, nonsense = _load_table()
    if cfg.limit is not None:
        table, nonsense = table[: cfg.limit], nonsense[: max(1, cfg.limit // 4)]
    summary = {}
    for kind in cfg.backends:
        t0, c0 = time.perf_counter(), time.process_time()
        asst = make_assistant(kind, llm_url=cfg.llm_url, llm_model=cfg.llm_model, llm_path=cfg.llm_path)
        load_s, load_cpu = time.perf_counter() - t0, time.process_time() - c0
        items, notices = [], 0
        for sentence, expected in [(s, e) for s, e in table] + [(s, None) for s in nonsense]:
            t, c = time.perf_counter(), time.process_time()
            got = [a.to_json() for a in asst.parse(sentence)]
            wall, cpu = time.perf_counter() - t, time.process_time() - c
            notices += asst.notice is not None
            ok = (len(got) == 1 and got[0]["action"] == "unknown") if expected is None else _strip(got) == _strip(expected)
            items.append({"sentence": sentence[:100], "expected": expected, "got": got, "ok": ok,
                          "wall_s": round(wall, 3), "cpu_s": round(cpu, 3)})
        n_cmd = len(table)
        res = {
            "backend": kind,
            "commands_correct": sum(i["ok"] for i in items[:n_cmd]), "commands_total": n_cmd,
            "nonsense_rejected": sum(i["ok"] for i in items[n_cmd:]), "nonsense_total": len(items) - n_cmd,
            "load_wall_s": round(load_s, 2), "load_cpu_s": round(load_cpu, 2),
            "mean_wall_s": round(sum(i["wall_s"] for i in items) / len(items), 3),
            "mean_cpu_s": round(sum(i["cpu_s"] for i in items) / len(items), 3),
            "fallback_notices": notices, "items": items,
        }
        _write_json(cfg.out_dir / f"assistant_{kind}.json", res)
        summary[kind] = res
        print(f"{kind}: commands {res['commands_correct']}/{n_cmd}, nonsense rejected "
              f"{res['nonsense_rejected']}/{res['nonsense_total']}, load {load_s:.1f}s, "
              f"mean {res['mean_wall_s']:.3f}s wall / {res['mean_cpu_s']:.3f}s cpu per sentence")
    return summary


if __name__ == "__main__":
    run_cli(lambda: bench(tyro.cli(BenchConfig)))
