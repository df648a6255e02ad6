"""A search's report: search.json (machines), search.md and search.png (people): every candidate's accuracy against
its latency, the Pareto front, the chosen one, the reference and Ultralytics' own exports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgecompress.files import write_atomic
from edgecompress.plots import pyplot, save

PLOT = "search.png"


def pareto(trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The trials no other is both faster and more accurate than, fastest first."""
    front, best = [], -1.0
    for t in sorted(trials, key=lambda t: (t["p50_ms"], -t["map50_95"])):
        if t["map50_95"] > best:
            front.append(t)
            best = t["map50_95"]
    return front


def write(result: dict[str, Any], out: Path) -> None:
    write_atomic(out / "search.json", json.dumps(result, indent=1))
    plot(result, out / PLOT)
    write_atomic(out / "search.md", markdown(result))


def plot(result: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.8, 4.4), dpi=110)
    trials = result["trials"]
    for rung, marker in ((0, "o"), (1, "s")):
        shown = [t for t in trials if (t["rung"] > 0) == bool(rung)]
        if shown:
            ax.scatter([t["p50_ms"] for t in shown], [t["map50_95"] for t in shown], marker=marker, s=28,
                       facecolors="none" if rung == 0 else "tab:blue", edgecolors="tab:blue",
                       label="candidates, not fine-tuned" if rung == 0 else "fine-tuned")
    front = pareto(trials)
    ax.plot([t["p50_ms"] for t in front], [t["map50_95"] for t in front], color="tab:blue", lw=1, alpha=0.6,
            label="Pareto front")
    ref = result["reference"]
    ax.scatter([ref["p50_ms"]], [ref["map50_95"]], marker="D", color="black", label="unpruned, float, trained size")
    for u in result["ultralytics"]:
        ax.scatter([u["p50_ms"]], [u["map50_95"]], marker="^", s=50, color="tab:orange")
        ax.annotate(u["name"], (u["p50_ms"], u["map50_95"]), fontsize=7, xytext=(4, -10), textcoords="offset points")
    if chosen := next((t for t in trials if t["id"] == result["chosen"]), None):
        ax.scatter([chosen["p50_ms"]], [chosen["map50_95"]], marker="*", s=220, color="tab:red", label="chosen",
                   zorder=5)
    goal = result["goal"]
    if goal["max_latency_ms"]:
        ax.axvline(goal["max_latency_ms"], color="tab:red", ls="--", lw=1, label="latency limit")
    else:
        ax.axhline(goal["map50_95"], color="tab:red", ls="--", lw=1, label=f"-{goal['max_map_drop']} points")
    ax.set_xlabel("end-to-end p50 latency, ms (the frame to detections)")
    ax.set_ylabel("mAP50-95")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    save(fig, path)


def markdown(result: dict[str, Any]) -> str:
    ref, goal = result["reference"], result["goal"]
    trials = sorted(result["trials"], key=lambda t: t["p50_ms"])
    front = {t["id"] for t in pareto(trials)}
    aim = (f"the most accurate artifact under {goal['max_latency_ms']} ms end to end" if goal["max_latency_ms"] else
           f"the fastest artifact within {goal['max_map_drop']} mAP50-95 points of the unpruned model "
           f"(mAP50-95 >= {goal['map50_95']:.4f})")
    chosen = next((t for t in trials if t["id"] == result["chosen"]), None)
    lines = ["# Search", "", f"Goal: {aim}. Reference: the unpruned model in the target's float precision at "
             f"{ref['imgsz']} px, mAP50-95 {ref['map50_95']:.4f}, end-to-end p50 {ref['p50_ms']:.1f} ms.", ""]
    if chosen:
        lines += [f"**Chosen**: {chosen['imgsz']} px, {chosen['prune']:.0%} of the FLOPs pruned, {chosen['precision']}"
                  + (f", fine-tuned {chosen['epochs']} epochs" if chosen.get("epochs") else "")
                  + f": mAP50-95 {chosen['map50_95']:.4f} ({100 * (chosen['map50_95'] - ref['map50_95']):+.2f} points),"
                  f" p50 {chosen['p50_ms']:.1f} ms ({ref['p50_ms'] / chosen['p50_ms']:.2f}x the reference"
                  + "".join(f", {u['p50_ms'] / chosen['p50_ms']:.2f}x {u['name']}" for u in result["ultralytics"]
                            if u["retimed"] and chosen["retimed"])
                  + f"); artifact `{result['artifact']}`, its run in `{chosen['folder']}`.", ""]
    else:
        lines += ["**No candidate meets the goal**: widen search.imgsz or search.prune, raise the budget, or relax "
                  "the goal.", ""]
    lines += [f"{len(result['trials'])} candidates measured, {result['trials_run']} trials run here "
              f"({result['executor']}), {result['seconds'] / 60:.1f} minutes; stopped: {result['stopped']}.", "",
              f"![mAP50-95 against latency]({PLOT})", "",
              "p50: the frame to detections, timed taking turns with the other candidates; network: its network "
              "alone, timed by its own trial at its own moment (on a shared machine, not comparable across "
              "trials).", "",
              "| | imgsz | pruned | precision | rung | epochs | mAP50-95 | p50 ms | network p50 ms (alone) | GFLOPs "
              "| MB |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for t in trials:
        mark = "**chosen**" if chosen and t["id"] == chosen["id"] else "front" if t["id"] in front else ""
        lines.append(f"| {mark} | {t['imgsz']} | {t['prune']:.0%} | {t['precision']} | {t['rung']} | "
                     f"{t.get('epochs', 0)} | {t['map50_95']:.4f} | {t['p50_ms']:.1f} | {t['inference_p50_ms']:.1f} | "
                     f"{t['gflops']:.2f} | {t['file_mb']:.1f} |")
    if result["ultralytics"]:
        turns = " (p50 timed taking turns with the finalists)" if result["ultralytics"][0]["retimed"] else ""
        lines += ["", f"Ultralytics' own exports at the trained size, measured the same way{turns}:", "",
                  "| export | mAP50-95 | p50 ms | network p50 ms (alone) |", "|---|---|---|---|"]
        lines += [f"| {u['name']} | {u['map50_95']:.4f} | {u['p50_ms']:.1f} | {u['inference_p50_ms']:.1f} |"
                  for u in result["ultralytics"]]
    lines += ["", "What the search did:", "", *[f"- {line}" for line in result["log"]], ""]
    return "\n".join(lines)
