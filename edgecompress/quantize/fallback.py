"""The accuracy-aware fallback: INT8 first, then the most sensitive layers kept in float until the model is within
its budget against FP32."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from edgecompress import progress
from edgecompress.files import copy_over


def accuracy_aware(build: Callable[[Sequence[str]], Path], evaluate: Callable[[Path], float],
                   ranking: Callable[[], list[tuple[str, float]]], baseline: float, max_drop: float,
                   max_float: int, start: tuple[Path, float] | None = None) -> tuple[Path, dict]:
    """Build the INT8 model (or take `start`, the model with no layer in float already built and scored); while it
    loses more than `max_drop` points, keep the 1, 2, 4, ... most damaging layers (by `ranking`, computed once and
    only when needed) in float. Stops at the first model within budget; when none is, returns the most accurate one
    tried, and says so."""
    steps: list[dict[str, Any]] = []
    ranked: list[tuple[str, float]] = []
    count = 0
    best: tuple[float, Path, list[str]] | None = None
    with progress.task("INT8", unit="try", each=True) as tries:
        while True:
            keep = [name for name, _ in ranked[:count]]
            artifact, score = start if start and not keep else (build(keep), None)
            score = evaluate(artifact) if score is None else score
            drop = round((baseline - score) * 100, 3)
            steps.append({"float_layers": len(keep), "map50_95": score, "drop_points": drop})
            tries.advance(**{"layers in float": len(keep), "mAP50-95": score, "points lost": drop})
            if best is None or score > best[0]:
                best = (score, _stash(artifact), keep)
            if drop <= max_drop or count >= max_float:
                break
            if not ranked:
                ranked = ranking()
            count = min(max(1, 2 * count), max_float, len(ranked))
            if count == len(keep):  # nothing left to keep in float
                break
    score, artifact, keep = best
    final = _unstash(artifact)
    return final, {
        "int8_map50_95": score, "drop_points": round((baseline - score) * 100, 3), "budget_points": max_drop,
        "within_budget": (baseline - score) * 100 <= max_drop,
        "float_layers": [{"node": n, "sqnr_db": s} for n, s in ranked if n in keep],
        "fallback_steps": steps,
    }


def _stash(artifact: Path) -> Path:
    """Keep a copy of a candidate artifact, since the next fallback step overwrites the same path."""
    copy = artifact.with_name(artifact.name + ".best")
    copy_over(artifact, copy)
    return copy


def _unstash(copy: Path) -> Path:
    artifact = copy.with_name(copy.name.removesuffix(".best"))
    copy_over(copy, artifact)
    shutil.rmtree(copy) if copy.is_dir() else copy.unlink()
    return artifact
