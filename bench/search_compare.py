"""`compress search` against Ultralytics' own exports: the chosen artifact's network timed taking turns with
Ultralytics' OpenVINO INT8 and FP32 exports at the trained size (one process), its end-to-end time as the search's
closing timing took it (taking turns with the same exports), and its mAP50-95 against Ultralytics' FP32 export, both
from the search's own measurements (the same evaluator for every artifact).

    python bench/search_compare.py --model yolov8n-bccd [--target x86] [--max-map-drop 1.0] [--budget 60m]
        [--imgsz 640 512 448] [--prune 0 0.25] [--out bench/results/search]

A killed run resumes: the search keeps its finished trials. Both goals (--max-map-drop, --max-latency-ms) search the
same folder, so the second reads back the first's rung 0; each goal's report is kept in a subfolder.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
from common import RUNTIMES, data_path, interleaved, model_path

from edgecompress.recipe import Recipe
from edgecompress.search.config import parse_budget
from edgecompress.search.search import search


def interleaved_p50(artifacts: dict[str, tuple[Path, str, int]], runs: int = 400) -> dict[str, float]:
    """p50 inference ms of each artifact (path, runtime, input size), all loaded here and taking turns."""
    sessions = {name: (RUNTIMES[runtime].load(path, shared=True), size) for name, (path, runtime, size) in
                artifacts.items()}
    inputs = {name: np.random.default_rng(0).random((1, 3, size, size), dtype=np.float32)
              for name, (_, size) in sessions.items()}
    times = interleaved({name: (lambda s=s, x=inputs[name]: s.infer(x)) for name, (s, _) in sessions.items()}, runs)
    return {name: round(float(np.percentile(t, 50)), 3) for name, t in times.items()}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="yolov8n-bccd")
    p.add_argument("--target", default="x86")
    p.add_argument("--max-map-drop", type=float, default=1.0)
    p.add_argument("--max-latency-ms", type=float)
    p.add_argument("--budget", default="60m")
    p.add_argument("--imgsz", nargs="+", type=int, default=[], help="sizes to try (default: the search's)")
    p.add_argument("--prune", nargs="+", type=float, help="FLOPs fractions to try (default: the search's)")
    p.add_argument("--executor", default="sequential")
    p.add_argument("--out", type=Path, default=Path("bench/results/search"))
    args = p.parse_args()
    settings = {"max_map_drop": args.max_map_drop, "max_latency_ms": args.max_latency_ms, "executor": args.executor,
                "imgsz": args.imgsz, **({"prune": args.prune} if args.prune else {}), **parse_budget(args.budget)}
    recipe = Recipe.from_dict({"model": str(model_path(args.model)), "data": str(data_path(args.model)),
                               "target": args.target, "search": settings})
    out = args.out / f"{args.model}-{args.target}"
    result = search(recipe, out)
    goal = f"max-latency-{args.max_latency_ms:g}ms" if args.max_latency_ms else f"max-map-drop-{args.max_map_drop:g}"
    kept = out / goal
    kept.mkdir(exist_ok=True)  # both goals search one folder (rung 0 is theirs in common); each keeps its report
    for name in ("search.json", "search.md", "search.png"):
        shutil.copy2(out / name, kept / name)
    trials = [json.loads(p.read_text()) for p in (out / "trials").glob("*/trial.json")]
    rows = {}
    for t in trials:
        if t["kind"] == "ultralytics":
            rows.update({s["name"]: (s, recipe.imgsz) for s in t["stages"][1:]})
        if t["id"] == result["chosen"]:
            final = next(s for s in t["stages"] if s["name"] == t["final"]["stage"])
            network = final["info"].get("network", final["name"])
            rows["chosen"] = (next(s for s in t["stages"] if s["name"] == network), t["candidate"]["imgsz"])
    p50 = interleaved_p50({name: (Path(s["benchmark"]["artifact"]), s["runtime"], size)
                           for name, (s, size) in rows.items()})
    maps = {name: s["accuracy"]["map50_95"] for name, (s, _) in rows.items()}
    fp32 = next(n for n in rows if n.startswith("ultralytics") and n.endswith("fp32"))
    int8 = next((n for n in rows if n.startswith("ultralytics") and n.endswith("int8")), fp32)
    chosen = next(t for t in result["trials"] if t["id"] == result["chosen"])
    frame = {u["name"]: u["p50_ms"] for u in result["ultralytics"] if u["retimed"]}
    print(json.dumps({"chosen": chosen, "stopped": result["stopped"],
                      "search_minutes": round(result["seconds"] / 60, 1), "p50_ms": p50, "map50_95": maps,
                      "speedup_vs_ultralytics_int8": round(p50[int8] / p50["chosen"], 2),
                      "end_to_end_speedup_vs_ultralytics_int8": round(frame[int8] / chosen["p50_ms"], 2)
                      if int8 in frame else None,
                      "points_vs_ultralytics_fp32": round(100 * (maps["chosen"] - maps[fp32]), 2)}, indent=1))


if __name__ == "__main__":
    main()
