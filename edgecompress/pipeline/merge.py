"""`compress report`: run reports (report.json) and on-device benchmarks (bench.json) merged into one comparison.

One row per artifact measured on one device. A bench file borrows the accuracy of the run stage whose artifact has
the same bytes (sha256): accuracy does not change with the device, latency does. Writes report.md with a table of
every stage and device, a table of the artifacts measured by more than one source, and two plots.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress.device.bench import SCHEMA as BENCH_SCHEMA
from edgecompress.device.bench import artifact_digest
from edgecompress.device.host import device_name
from edgecompress.errors import UserError
from edgecompress.files import write_atomic
from edgecompress.pipeline.report import SCHEMA as RUN_SCHEMA
from edgecompress.plots import pyplot, save

ACCURACY_PLOT = "accuracy_latency.png"
STAGES_PLOT = "stages.png"


@dataclass(frozen=True)
class Row:
    """One artifact measured on one device, by one source (a run or a bench file)."""

    source: str  # the source's label: the name of its folder
    kind: str  # "run" or "bench"
    device: str
    target: str
    stage: str  # the run's stage name; a bench file takes the name of the run stage with the same artifact
    runtime: str
    precision: str
    map50_95: float | None  # None: no run measured this artifact's accuracy
    file_mb: float
    inference: dict[str, float]  # runs, p50_ms, p90_ms, p99_ms, mean_ms, throughput_fps
    end_to_end_p50_ms: float | None
    peak_rss_mb: float
    sha256: str | None

    @property
    def name(self) -> str:
        return f"{self.stage} · {self.source}"


def load(path: Path) -> tuple[str, dict[str, Any]]:
    """(schema, document) of a run folder, report.json, bench folder or bench.json."""
    file = path
    if path.is_dir():
        found = [path / n for n in ("report.json", "bench.json") if (path / n).is_file()]
        if len(found) != 1:
            raise UserError(f"{path} holds {'both' if found else 'neither'} report.json {'and' if found else 'nor'} "
                            f"bench.json; pass the run folder, the bench folder or the JSON file itself")
        file = found[0]
    try:
        doc = json.loads(file.read_text())
    except FileNotFoundError:
        raise UserError(f"{path} does not exist; pass a run folder (report.json) or a bench folder (bench.json)") \
            from None
    except (OSError, ValueError) as e:
        raise UserError(f"{file} cannot be read as JSON ({e})") from None
    schema = doc.get("schema") if isinstance(doc, dict) else None
    if schema not in (RUN_SCHEMA, BENCH_SCHEMA):
        raise UserError(f"{file} is neither a run report ({RUN_SCHEMA}) nor a bench file ({BENCH_SCHEMA}): "
                        f"its schema is {schema!r}")
    return schema, doc


def rows(sources: list[Path]) -> list[Row]:
    """Every stage of every run and every bench file, bench files matched to run stages by artifact digest."""
    loaded = [(p, *load(p)) for p in sources]
    labels = _labels([p for p, _, _ in loaded])
    result: list[Row] = []
    by_digest: dict[str, Row] = {}
    for (_, schema, doc), label in zip(loaded, labels):
        if schema == RUN_SCHEMA:
            for s in doc["stages"]:
                artifact = Path(s["artifact"])
                row = _row(label, "run", device_name(doc["host"]), doc["target"]["name"], s["name"], s["runtime"],
                           s["precision"], s["accuracy"]["map50_95"], s["benchmark"],
                           artifact_digest(artifact) if artifact.exists() else None)
                result.append(row)
                if row.sha256:
                    by_digest.setdefault(row.sha256, row)
    for (path, schema, doc), label in zip(loaded, labels):
        if schema == BENCH_SCHEMA:
            run = by_digest.get(doc["sha256"])
            target = doc["target"]["name"] if doc["target"] else (run.target if run else "-")
            result.append(_row(label, "bench", doc["device"], target,
                               run.stage if run else Path(doc["artifact"]).name, doc["runtime"],
                               run.precision if run else "?", run.map50_95 if run else None, doc, doc["sha256"]))
    return result


def _row(source: str, kind: str, device: str, target: str, stage: str, runtime: str, precision: str,
         map50_95: float | None, bench: dict[str, Any], sha256: str | None) -> Row:
    e2e = bench.get("end_to_end")
    return Row(source, kind, device, target, stage, runtime, precision, map50_95, bench["file_mb"],
               bench["inference"], e2e["p50_ms"] if e2e else None, bench["memory"]["peak_rss_mb"], sha256)


def _labels(paths: list[Path]) -> list[str]:
    """Each source's folder name, numbered where two share one."""
    names = [(p if p.is_dir() else p.parent).resolve().name or str(p) for p in paths]
    return [f"{n} ({names[:i].count(n) + 1})" if names.count(n) > 1 else n for i, n in enumerate(names)]


def write(sources: list[Path], out: Path) -> Path:
    """Merge `sources` into out/report.md with its two plots; returns the Markdown's path."""
    table = rows(sources)
    if not table:
        raise UserError("the sources hold no measured stages; pass run folders or bench folders")
    out.mkdir(parents=True, exist_ok=True)
    plot_accuracy(table, out / ACCURACY_PLOT)
    plot_stages(table, out / STAGES_PLOT)
    path = out / "report.md"
    write_atomic(path, markdown(table, sources))
    return path


def markdown(table: list[Row], sources: list[Path]) -> str:
    lines = ["# edgecompress comparison", "", "Sources:", ""]
    lines += [f"- `{p}`" for p in sources]
    lines += ["", "## Every stage on every device", "",
              "| stage | source | device | target | runtime | precision | mAP50-95 | size (MB) "
              "| inference p50 / p90 / p99 (ms) | throughput (img/s) | end-to-end p50 (ms) | peak RSS (MB) |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(table, key=lambda r: (r.stage, r.device, r.source)):
        inf = r.inference
        lines.append(
            f"| {r.stage} | {r.source} ({r.kind}) | {r.device} | {r.target} | {r.runtime} | {r.precision} "
            f"| {_num(r.map50_95, 3)} | {r.file_mb:.1f} | {inf['p50_ms']:.1f} / {inf['p90_ms']:.1f} / "
            f"{inf['p99_ms']:.1f} | {inf['throughput_fps']:.1f} | {_num(r.end_to_end_p50_ms, 1)} "
            f"| {r.peak_rss_mb:.0f} |")
    lines += ["", *_same_artifact(table)]
    lines += [f"![accuracy against latency]({ACCURACY_PLOT})", "", f"![size and latency per stage]({STAGES_PLOT})", "",
              "Latency: batch 1 after warm-up, inference alone; end to end adds letterbox and NMS ('-': the bench "
              "had no --data). A bench file's mAP50-95 is the run's, measured on the artifact with the same "
              "sha256 ('-': no run here measured it).", ""]
    return "\n".join(lines)


def _same_artifact(table: list[Row]) -> list[str]:
    """A table of inference p50 for each artifact (by sha256) that more than one source timed."""
    groups: dict[str, list[Row]] = {}
    for r in table:
        if r.sha256:
            groups.setdefault(r.sha256, []).append(r)
    shared = {d: g for d, g in groups.items() if len(g) > 1}
    if not shared:
        return []
    columns = sorted({(r.source, r.device) for g in shared.values() for r in g})
    lines = ["## The same artifact on different devices or sources", "",
             "Inference p50 in ms; the first column's stage names the artifact.", "",
             "| artifact | " + " | ".join(f"{s} ({d})" for s, d in columns) + " |",
             "|---|" + "---|" * len(columns)]
    for digest, group in shared.items():
        cells = {(r.source, r.device): r.inference["p50_ms"] for r in group}
        lines.append(f"| {group[0].stage} ({digest[:8]}) | "
                     + " | ".join(_num(cells.get(c), 1) for c in columns) + " |")
    return lines + [""]


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def plot_accuracy(table: list[Row], path: Path) -> None:
    """mAP50-95 against inference p50, one colour per source, one marker per precision."""
    from matplotlib.lines import Line2D

    plt = pyplot()
    measured = [r for r in table if r.map50_95 is not None]
    sources = sorted({r.source for r in table})
    markers = {"fp32": "o", "fp16": "s", "int8": "D"}
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    if not measured:
        ax.text(0.5, 0.5, "no source measured accuracy", ha="center", transform=ax.transAxes)
    xs, ys = [r.inference["p50_ms"] for r in measured], [r.map50_95 for r in measured]
    log_x = bool(xs) and max(xs) > 8 * min(xs)  # devices an order of magnitude apart
    placed: list[tuple[float, float]] = []
    for r, x, y in zip(measured, xs, ys):
        color = f"C{sources.index(r.source)}"
        ax.scatter(x, y, s=70, color=color, marker=markers.get(r.precision, "^"), edgecolor="black", linewidth=0.5)
        # Points of the same artifact on one device sit on top of each other: stack their labels downwards.
        near = sum(abs(_spread(x, px, log_x)) < 0.03 and abs(y - py) < 0.004 for px, py in placed)
        placed.append((x, y))
        ax.annotate(r.stage, (x, y), textcoords="offset points", xytext=(7, 4 - 11 * near), fontsize=8, color=color)
    if ys:  # at least 5 mAP points tall, so that noise-sized differences do not fill the plot
        mid, half = (max(ys) + min(ys)) / 2, max((max(ys) - min(ys)) * 0.65, 0.025)
        ax.set_ylim(mid - half, mid + half)
    if log_x:
        ax.set_xscale("log")
    handles = [Line2D([], [], color=f"C{i}", marker="o", linestyle="", label=f"{s} ({_device_of(table, s)})")
               for i, s in enumerate(sources)]
    precisions = sorted({r.precision for r in measured})
    if len(precisions) > 1:
        handles += [Line2D([], [], color="gray", marker=markers.get(p, "^"), linestyle="", label=p)
                    for p in precisions]
    ax.legend(handles=handles, fontsize=8, loc="best")
    ax.set_xlabel("inference latency p50 (ms, batch 1): left is faster")
    ax.set_ylabel("mAP50-95: up is more accurate")
    ax.set_title("Accuracy against latency, per stage and device")
    ax.grid(alpha=0.3, which="both")
    ax.margins(x=0.2)
    save(fig, path)


def _spread(x: float, other: float, log: bool) -> float:
    """Relative horizontal distance of two latencies, as they look on the axis."""
    return (x / other - 1) if not log else float(np.log10(x / other))


def _device_of(table: list[Row], source: str) -> str:
    return next(r.device for r in table if r.source == source)


def plot_stages(table: list[Row], path: Path) -> None:
    """Horizontal bars: file size per artifact (left) and inference p50 per stage and source (right)."""
    plt = pyplot()
    sources = sorted({r.source for r in table})
    ordered = sorted(table, key=lambda r: (r.kind == "bench", r.source, r.stage))  # runs first: they name stages
    artifacts: dict[str, Row] = {}
    for r in ordered:  # size belongs to the artifact, not the device: one bar per distinct artifact
        artifacts.setdefault(r.sha256 or r.name, r)
    shared_names = {r.stage for r in artifacts.values() if sum(a.stage == r.stage for a in artifacts.values()) > 1}
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 1.4 + 0.38 * len(ordered)), dpi=120,
                                      gridspec_kw={"width_ratios": [1, 1.5]})
    _bars(left, [r.name if r.stage in shared_names else r.stage for r in artifacts.values()],
          [r.file_mb for r in artifacts.values()], [f"C{sources.index(r.source)}" for r in artifacts.values()],
          "file size (MB)", "Size per artifact")
    _bars(right, [f"{r.name} ({r.device})" for r in ordered], [r.inference["p50_ms"] for r in ordered],
          [f"C{sources.index(r.source)}" for r in ordered], "inference latency p50 (ms, batch 1)",
          "Latency per stage and device")
    save(fig, path)


def _bars(ax: Any, labels: list[str], values: list[float], colors: list[str], xlabel: str, title: str) -> None:
    ax.barh(range(len(values)), values, color=colors)
    ax.set_yticks(range(len(values)), labels, fontsize=8)
    for i, value in enumerate(values):
        ax.text(value, i, f" {value:.1f}", va="center", fontsize=7)
    ax.invert_yaxis()  # first row on top, as in the tables
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    ax.margins(x=0.15)
