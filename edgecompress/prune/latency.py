"""In-context latency costs: what cutting each channel group saves in the whole model, in the target runtime.

A convolution timed alone costs nothing like what it costs inside a runtime's fused graph (BENCHMARKS.md,
"Pruning": the per-layer table this replaces did not deliver), so each group is cut alone, at `PROBE` of its
channels rounded to the target's channel multiple, the whole model exported and timed in the target's runtime,
taking turns with the unpruned model in one process (device.timing.interleaved). One probe is noisy (a few
percent of a small saving), so each group's measured saving is shrunk toward its FLOPs-proportional prediction by
empirical Bayes: a group whose saving is lost in the noise gets about its FLOPs' share, a clear one keeps its own.

Runtimes that do not run here (TensorRT off a Jetson, ncnn) get a documented proxy: FLOPs at the target's channel
multiple, in GFLOPs instead of milliseconds (`Meter.proxy`), and the report says so.

Costs are cached as JSON under $EDGECOMPRESS_CACHE/latency (default ~/.cache/edgecompress/latency), keyed by the
architecture (module types and shapes), image size, runtime and its version, host CPU and channel multiple.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from ultralytics.nn.tasks import DetectionModel
from ultralytics.utils.torch_utils import get_flops

from edgecompress import progress
from edgecompress.config import Registry
from edgecompress.device.host import host_key
from edgecompress.device.timing import interleaved
from edgecompress.files import write_atomic
from edgecompress.plots import pyplot, save
from edgecompress.yolo.blocks import fold_blocks

PROBE = 0.5  # fraction of a group's channels cut when its cost is measured
QUANTILE = 25  # the lower quartile of the turns: what the runtime does when the machine leaves it alone
BOOTSTRAP = 200  # resamples of the turns for a saving's standard error


@dataclass(frozen=True)
class Comparison:
    """A model against the unpruned one, in the meter's unit: `base` and `value` are the lower quartiles of their
    turns, `se` the bootstrap standard error of their difference (0 for a proxy)."""

    base: float
    value: float
    se: float = 0.0

    @property
    def saved(self) -> float:
        return self.base - self.value


class Meter:
    """Measures models against the unpruned `base` in one runtime. `unit` is what its numbers are in."""

    proxy = False
    unit = "ms"

    def __init__(self, runtime: str, base: DetectionModel, imgsz: int, folder: Path, turns: int) -> None:
        self.runtime, self.imgsz, self.folder, self.turns = runtime, imgsz, Path(folder), turns

    def identity(self) -> dict[str, str]:
        """What its numbers depend on besides the model and host: the cache key's runtime part."""
        raise NotImplementedError

    def compare(self, model: DetectionModel) -> Comparison:
        raise NotImplementedError


METERS: Registry[type[Meter]] = Registry("latency meter")  # by the target's runtime name


class RuntimeMeter(Meter):
    """The whole model exported to ONNX (Conv+BN fused, split blocks folded, as deployed) and run by the runtime
    on the CPU, taking turns with the unpruned model. Both are loaded afresh for every comparison: a session that
    has run before runs faster than a new one of the same model (BENCHMARKS.md, "Latency-aware pruning")."""

    def __init__(self, runtime: str, base: DetectionModel, imgsz: int, folder: Path, turns: int) -> None:
        super().__init__(runtime, base, imgsz, folder, turns)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.input = np.zeros((1, 3, imgsz, imgsz), np.float32)
        self.base = export(base, imgsz, self.folder / "base.onnx")

    def identity(self) -> dict[str, str]:
        from edgecompress.device.runtime import RUNTIMES

        return {"runtime": self.runtime, "version": RUNTIMES[self.runtime].version()}

    def compare(self, model: DetectionModel) -> Comparison:
        from edgecompress.device.runtime import RUNTIMES

        runtime = RUNTIMES[self.runtime]
        base = runtime.load(self.base, shared=True)
        probe = runtime.load(export(model, self.imgsz, self.folder / "probe.onnx"), shared=True)
        times = interleaved({"base": lambda: base.infer(self.input), "probe": lambda: probe.infer(self.input)},
                            self.turns, warmup=5)
        return compare(np.asarray(times["base"]), np.asarray(times["probe"]))


class FlopsProxy(Meter):
    """GFLOPs at the target's channel multiple: where the runtime does not run here (TensorRT off a Jetson, ncnn)."""

    proxy = True
    unit = "GFLOPs"

    def __init__(self, runtime: str, base: DetectionModel, imgsz: int, folder: Path, turns: int) -> None:
        super().__init__(runtime, base, imgsz, folder, turns)
        self.base = get_flops(base, imgsz)

    def identity(self) -> dict[str, str]:
        return {"runtime": self.runtime, "proxy": "flops"}

    def compare(self, model: DetectionModel) -> Comparison:
        return Comparison(self.base, get_flops(model, self.imgsz))


METERS.add("openvino", RuntimeMeter)
METERS.add("onnxruntime", RuntimeMeter)
METERS.add("tensorrt", FlopsProxy)
METERS.add("ncnn", FlopsProxy)


def meter(runtime: str, base: DetectionModel, imgsz: int, folder: Path, turns: int) -> Meter:
    """The meter for a target's runtime: timed where it runs here, the FLOPs proxy where it cannot."""
    from edgecompress.device.runtime import RUNTIMES

    cls = METERS[runtime]
    if cls is RuntimeMeter and RUNTIMES[runtime].unusable():
        cls = FlopsProxy
    return cls(runtime, base, imgsz, folder, turns)


def export(model: DetectionModel, imgsz: int, path: Path) -> Path:
    """`model` as the runtimes run it: an ONNX (opset 17) of a fused copy with split blocks folded back, which
    onnxruntime runs and OpenVINO reads directly (the same graph its IR would hold). Torch's exporter alone: a
    probe needs the graph the runtime fuses, not Ultralytics' metadata, and this is several times faster."""
    work = copy.deepcopy(model).float().cpu().eval()
    fold_blocks(work)
    work.fuse(verbose=False)
    for m in work.modules():
        if hasattr(m, "export") and hasattr(m, "format"):  # the head returns its decoded tensor alone
            m.export, m.format = True, "onnx"
    with torch.no_grad():
        torch.onnx.export(work, torch.zeros(1, 3, imgsz, imgsz), str(path), opset_version=17,
                          input_names=["images"], output_names=["output0"], dynamo=False)
    return path


def compare(base: np.ndarray, probe: np.ndarray, seed: int = 0) -> Comparison:
    """Lower quartiles of two runs of turns, and the bootstrap standard error of their difference (turns
    resampled in pairs: a turn's slow moment hits both)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(base), (BOOTSTRAP, len(base)))
    diffs = np.percentile(base[idx], QUANTILE, axis=1) - np.percentile(probe[idx], QUANTILE, axis=1)
    return Comparison(float(np.percentile(base, QUANTILE)), float(np.percentile(probe, QUANTILE)),
                      float(diffs.std(ddof=1)))


def shrink(saved: np.ndarray, se: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Each measured saving pulled toward the prediction `scale * predicted` by its noise: weight
    tau² / (tau² + se²). The scale is fitted by inverse-variance least squares (precise groups decide it), tau², the
    groups' true spread about the prediction beyond their noise, by DerSimonian and Laird's moment estimator."""
    if not (se > 0).all():  # exact figures (the FLOPs proxy) need no shrinking
        return saved
    w = 1 / se ** 2
    scale = max(0.0, float((w * saved) @ predicted / ((w * predicted) @ predicted))) if predicted.any() else 0.0
    prior = scale * predicted
    q = float(w @ (saved - prior) ** 2)
    tau2 = max(0.0, (q - (len(saved) - 1)) / max(float(w.sum() - (w ** 2).sum() / w.sum()), 1e-12))
    weight = tau2 / (tau2 + se ** 2)
    return weight * saved + (1 - weight) * prior


@dataclass(frozen=True)
class Cost:
    """One group root's cost, in the meter's unit: channels cut at the probe, the measured saving and its standard
    error, the FLOPs-proportional prediction, and the shrunk estimate (`cost`) the allocation uses. A split block's
    two halves are measured together and each carries half."""

    channels: int
    saved: float
    se: float
    predicted: float
    cost: float


def costs(plan: Any, meter_: Meter, multiple: int) -> tuple[float, dict[str, Cost]]:
    """The unpruned model's latency and every group's cost (by root name). Measurements are cached per group:
    groups this architecture, image size, runtime, host and multiple were measured with before are reused, and
    only the others are timed."""
    path = cache_dir() / f"{cache_key(plan.model, meter_, multiple)}.json"
    stored = json.loads(path.read_text()) if path.is_file() else {"unit": meter_.unit, "groups": {}, "bases": []}
    todo = [roots for roots in plan.units() if plan.names[roots[0]] not in stored["groups"]]
    # a group whose block's other half stays (C2PSA)
    frozen = {g.root for g in plan.groups if g.tie and g.tie in plan.frozen_ties}
    if todo:
        base_flops = get_flops(plan.model, meter_.imgsz)
        with progress.task("latency costs", total=len(todo), unit="group") as bar:
            for roots in todo:
                n = {r: 0 if r in frozen else
                     r.out_channels - plan.round_keep(r.out_channels - int(PROBE * r.out_channels), r.out_channels)
                     for r in roots}
                c, flops = Comparison(0.0, 0.0), 0.0
                if any(n.values()):  # a group already at one multiple cannot be cut: it saves nothing
                    probe = plan.prune_counts(n, dry_run=True)
                    c, flops = meter_.compare(probe), 1 - get_flops(probe, meter_.imgsz) / base_flops
                    stored["bases"].append(c.base)
                stored["groups"].update({plan.names[r]: {"channels": n[r], "saved": c.saved / len(roots),
                                                         "se": c.se / len(roots), "flops": flops / len(roots)}
                                         for r in roots})
                bar.advance(group=plan.names[roots[0]], saved=round(c.saved, 3))
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(stored, indent=1))
    base = float(np.median(stored["bases"])) if stored["bases"] else 0.0
    raw = {plan.names[g.root]: stored["groups"][plan.names[g.root]] for g in plan.groups}
    cut = [name for name, r in raw.items() if r["channels"]]
    shrunk = dict(zip(cut, shrink(*(np.array([raw[n][k] for n in cut]) for k in ("saved", "se")),
                                  np.array([raw[n]["flops"] * base for n in cut])))) if cut else {}
    return base, {name: Cost(r["channels"], round(r["saved"], 5), round(r["se"], 5), round(r["flops"] * base, 5),
                             round(float(shrunk.get(name, 0.0)), 5)) for name, r in raw.items()}


def cache_dir() -> Path:
    return Path(os.environ.get("EDGECOMPRESS_CACHE") or Path.home() / ".cache" / "edgecompress") / "latency"


def cache_key(model: nn.Module, meter_: Meter, multiple: int) -> str:
    architecture = [(name, type(m).__name__, [list(p.shape) for p in m.parameters(recurse=False)])
                    for name, m in model.named_modules()]
    facts = {"architecture": architecture, "imgsz": meter_.imgsz, **meter_.identity(),
             "cpu": host_key()["cpu"], "multiple": multiple, "probe": PROBE}
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:24]


def plot_costs(found: dict[str, Cost], unit: str, proxy: bool, path: Path) -> None:
    """Saved per group at the probe: measured (with its standard error) and the shrunk estimate used."""
    plt = pyplot()
    names = sorted(found, key=lambda n: [int(t) if t.isdigit() else t for t in n.split(".")])  # network order
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(6, 0.18 * len(names)), 4))
    ax.bar(x, [found[n].saved for n in names], yerr=[found[n].se for n in names], label="measured", color="C0",
           error_kw={"elinewidth": 0.6})
    ax.plot(x, [found[n].cost for n in names], "o", ms=3, color="C3", label="used (shrunk toward FLOPs)")
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_xticks(x, [n.removeprefix("model.") for n in names], rotation=90, fontsize=6)
    ax.set_ylabel(f"{unit} saved at {int(PROBE * 100)}% channels")
    what = "FLOPs proxy: the runtime does not run here" if proxy else "whole model, taking turns with the unpruned one"
    ax.set_title(f"Latency saved per channel group\n({what})", fontsize=9)
    ax.legend(fontsize=7)
    save(fig, path)
