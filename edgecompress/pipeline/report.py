"""The run's report: `report.json` for machines (schema below), `report.md` and `report.png` for people.

report.json (schema "edgecompress.report/1"):
  edgecompress: version that wrote it
  model: {path, sha256, architecture, classes, names, parameters, gflops, stride}
  data: {path, split, images}
  target: {name, runtime, description}
  host: {cpu, cores, machine, os, python}
  recipe: the full recipe, every setting
  stages: [{name, artifact, runtime, precision, parameters, gflops, reused,
            accuracy: {map50, map50_95, precision, recall, images, val_speed_ms}
                      (a stage with the frame inside: protocol "frames", network: its network's accuracy measured
                      the same way, change_points: the difference),
            benchmark: {file_mb, load_s, threads, execution_precision, takes, nms_inside, thresholds,
                        end_to_end: LATENCY, inference: LATENCY, memory: {peak_rss_mb, session_rss_mb}, host}}]
     where LATENCY = {runs, p50_ms, p90_ms, p99_ms, mean_ms, throughput_fps}; end to end (the decoded frame to
     detections in its pixels) is the figure that counts
  final: {stage, artifact (path of the published artifact, relative to the output folder), network (beside an
          artifact with the frame inside: its network, which Ultralytics' YOLO() loads)}
  bundle: what a device bundle holds (Jetson: target, onnx, trtexec, typing {opset, fp32_nodes, fp16_tensors,
          fp32_tensors, boundaries {head, graph: {casts, io_casts, int8_to_float, float_to_int8}}}, deepstream
          {configs, labels, parser, build}, dla {layers, dla_layers, gpu_fallback [{node, op, reason}]}, engines);
          null for targets without one
  gates: [{gate, limit, value, passed}]
  passed: true when every gate holds
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgecompress import __version__
from edgecompress.device.host import host_info
from edgecompress.files import write_atomic
from edgecompress.plots import pyplot, save
from edgecompress.recipe import Recipe
from edgecompress.targets import Target

SCHEMA = "edgecompress.report/1"
OVER_BUDGET = ("try --quant qat, a larger quant.calibration_images, more layers in float (quant.max_float_layers) or "
               "a larger --max-map-drop")
FINETUNE_PLOT = "finetune.png"


def change_points(stage: dict[str, Any], stages: list[dict[str, Any]]) -> float:
    """mAP50-95 points a stage gained against the baseline checkpoint. A stage with the frame inside is measured
    fed as a device feeds it, which Ultralytics' validator (the baseline's protocol) cannot do: its network's
    change, plus what going inside changed against that network measured its way."""
    base = stages[0]["accuracy"]["map50_95"]
    if "network" not in stage["accuracy"]:
        return round((stage["accuracy"]["map50_95"] - base) * 100, 3)
    network = next(s for s in stages if s["name"] == stage["info"]["network"])
    return round(change_points(network, stages) + stage["accuracy"]["change_points"], 3)


def network_inference_ms(stage: dict[str, Any], stages: list[dict[str, Any]]) -> float:
    """The p50 of the network alone: a stage's inference, or for one with the frame inside its network's."""
    name = stage["info"].get("network", stage["name"]) if "frame" in stage["info"] else stage["name"]
    return next(s for s in stages if s["name"] == name)["benchmark"]["inference"]["p50_ms"]


def build(recipe: Recipe, target: Target, checkpoint: Path, checkpoint_sha: str, dataset: Any,
          described: dict[str, Any], stages: list[dict[str, Any]], published: list[Path],
          notes: list[str], bundle: dict[str, Any] | None = None) -> dict[str, Any]:
    """Assemble the report and judge the gates against the final stage (`dataset`: edgecompress.yolo.data.Dataset;
    `described`: the checkpoint's architecture, classes, parameters, GFLOPs and stride; `published`: the final
    artifact, and beside an artifact with the frame inside its network; `bundle`: the device bundle's facts,
    where the target makes one)."""
    baseline, last = stages[0], stages[-1]
    drop = -change_points(last, stages)
    gates = []
    if recipe.gates.max_map_drop is not None:
        gates.append({"gate": "max_map_drop", "limit": recipe.gates.max_map_drop, "value": drop,
                      "passed": drop <= recipe.gates.max_map_drop})
    int8 = [s["info"] for s in stages if s["info"].get("mode") == "ptq"]
    if recipe.gates.max_map_drop is not None and int8:  # INT8 held to its FP32 model, in the same runtime
        gates.append({"gate": "int8_map_drop", "limit": int8[0]["budget_points"], "value": int8[0]["drop_points"],
                      "passed": int8[0]["within_budget"]})
    if recipe.gates.max_latency_ms is not None:
        p50 = last["benchmark"]["end_to_end"]["p50_ms"]
        gates.append({"gate": "max_latency_ms", "limit": recipe.gates.max_latency_ms, "value": p50,
                      "passed": p50 <= recipe.gates.max_latency_ms})
    return {
        "schema": SCHEMA,
        "edgecompress": __version__,
        "model": {"path": str(checkpoint), "sha256": checkpoint_sha, "names": list(dataset.names.values()),
                  **described},
        "data": {"path": str(dataset.yaml), "split": recipe.eval.split,
                 "images": baseline["accuracy"]["images"],
                 "unusable": {str(path): why for path, why in dataset.unusable.items()}},  # skipped by every stage
        "target": {"name": target.name, "runtime": target.runtime, "description": target.description},
        "host": host_info(),
        "recipe": recipe.to_dict(),
        "stages": stages,
        "final": {"stage": last["name"], "artifact": published[0].name,
                  **({"network": published[1].name} if len(published) > 1 else {})},
        "bundle": bundle,
        "gates": gates,
        "passed": all(g["passed"] for g in gates),
        "notes": notes,
    }


def write(report: dict[str, Any], out: Path) -> None:
    """report.json, report.png (accuracy against latency), finetune.png (when a stage fine-tuned) and report.md,
    each written atomically."""
    write_atomic(out / "report.json", json.dumps(report, indent=2))
    plot(report["stages"], out / "report.png")
    if not plot_finetune(report["stages"], out / FINETUNE_PLOT):
        (out / FINETUNE_PLOT).unlink(missing_ok=True)
    write_atomic(out / "report.md", markdown(report, "report.png", out))


def plot(stages: list[dict[str, Any]], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    for i, s in enumerate(stages):
        x, y = s["benchmark"]["end_to_end"]["p50_ms"], s["accuracy"]["map50_95"]
        ax.scatter(x, y, s=60)
        # labels alternate above and below, so stages of equal accuracy do not print over each other
        ax.annotate(f"{s['name']}\n{s['benchmark']['file_mb']:.1f} MB", (x, y), textcoords="offset points",
                    xytext=(6, 6 if i % 2 == 0 else -24), fontsize=8)
    maps = [s["accuracy"]["map50_95"] for s in stages]
    middle, half = (max(maps) + min(maps)) / 2, max((max(maps) - min(maps)) * 0.75, 0.01)
    ax.set_ylim(middle - half, middle + half)  # at least +-1 point: rounding noise must not look like a cliff
    ax.set(xlabel="end-to-end latency p50 (ms, batch 1: the decoded frame to detections)", ylabel="mAP50-95",
           title="accuracy against latency, per stage")
    ax.grid(alpha=0.3)
    ax.margins(x=0.25)
    save(fig, path, dpi=110)


def precision(stage: dict[str, Any]) -> str:
    """The stored precision, and the one float layers execute in where the runtime chose another."""
    executed = stage["benchmark"].get("execution_precision")
    return f"{stage['precision']} ({executed} execution)" if executed and executed != "f32" \
        else stage["precision"]


def stage_details(stage: dict[str, Any], out: Path) -> list[str]:
    """What a compressing stage did, from the info it recorded, with its pictures (relative to `out`)."""
    info, name = stage["info"], stage["name"]
    folder = Path(stage["artifact"]).parent
    if "flops_removed" in info:
        lines = [f"- **{name}**: {info['flops_removed'] * 100:.1f}% of the FLOPs removed "
                 f"({info['before']['gflops']:.2f} -> {info['after']['gflops']:.2f} GFLOPs, "
                 f"{info['config']['criterion']} scores, {info['config']['allocation']} allocation)"
                 + (f"; {info['stopped_early']}" if info.get("stopped_early") else "")]
        if lat := info.get("latency"):
            lines += [f"- latency target: -{lat['target_removed']:.0%} of {lat['unpruned']:.2f} {lat['unit']} "
                      f"({lat['runtime']}), measured -{lat['removed']:.1%} (the closest of {len(lat['tries'])} tries) "
                      + ("(within" if lat["reached"] else "(NOT within") + f" {lat['tolerance']:.0%})"
                      + (f"; {lat['note']}" if "note" in lat else "")]
        for key, what in (("sensitivity", "pruning sensitivity per group"), ("latency", "latency saved per group")):
            if key in info:
                lines += ["", f"![{what}]({_relative(folder / info[key]['plot'], out)})", ""]
        return lines
    if info.get("mode") == "qat":
        return [f"- **{name}**: QAT, {info['epochs']} epochs of fake-quantized fine-tuning, then INT8 with "
                f"activations {info['scheme']['activations']}, weights {info['scheme']['weights']}; head decode "
                f"in float"]
    if info.get("mode") == "ptq":
        lines = [f"- **{name}**: {info['quantizer']} PTQ, ranges {info['scheme']['ranges']}, activations "
                 f"{info['scheme']['activations']}, weights {info['scheme']['weights']}; "
                 f"{-info['drop_points']:+.2f} mAP50-95 points against FP32 in this runtime (budget "
                 f"-{info['budget_points']}"
                 + ("" if info["within_budget"] else f": OVER BUDGET; {OVER_BUDGET}") + "); head decode in float; "
                 f"calibration method {info['method_reason']}"
                 + (f"; quantizer {c['reason']}" if (c := info.get("quantizer_choice")) else "")]
        if len(info["fallback_steps"]) > 1 or info["float_layers"]:
            lines += ["", "  | layers kept in float | mAP50-95 | change against FP32 (pts) |", "  |---|---|---|"]
            lines += [f"  | {step['float_layers']} | {step['map50_95']:.4f} | {-step['drop_points']:+.2f} |"
                      for step in info["fallback_steps"]]
            kept = ", ".join(f"`{layer['node']}`" for layer in info["float_layers"]) or "none"
            lines += ["", f"  Kept in float: {kept}", ""]
        return lines
    if "epochs_log" in info:
        lines = [f"- **{name}**: {info['config']['epochs']} epochs ({info['schedule']['name']} schedule) in "
                 f"{info['seconds']:.0f} s"]
        if (out / FINETUNE_PLOT).is_file():
            lines += ["", f"![validation mAP50-95 per fine-tuning epoch]({FINETUNE_PLOT})", ""]
        return lines
    if "typing" in info and "trtexec" not in info:
        return [f"- **{name}**: strongly typed FP16 ONNX for TensorRT (evaluated in onnxruntime on the CPU); "
                + typing_line(info["typing"])]
    if "trtexec" in info:
        return [f"- **{name}**: TensorRT engine `{info['engine']}` ({info['engines'][0]['typing']}), trtexec "
                f"command in `{info['trtexec']}`"
                + (f"; the frame artifact `{info['frame_onnx']}` beside it (engine `model_frame.plan`)"
                   if "frame_onnx" in info else "")]
    if "frame" in info:
        frame, acc = info["frame"], stage["accuracy"]
        return [f"- **{name}**: {info['network']} with the frame inside: takes {frame['takes']}; gives {frame['gives']}"
                + (f" (NMS at conf {frame['conf']}, iou {frame['iou']})" if frame["nms"] else "")
                + f". mAP50-95 {acc['change_points']:+.2f} points against {info['network']} fed the same frames by "
                  f"the host (its letterbox with OpenCV, NMS in numpy; {acc['network']['map50_95']:.4f}), both at "
                  f"the eval thresholds; Ultralytics' YOLO() loads the network published beside it"
                + ("" if frame["input"] == "tensor" else ", not this one (its input is not Ultralytics' tensor)")]
    return []


def plot_finetune(stages: list[dict[str, Any]], path: Path) -> bool:
    """Validation mAP50-95 per epoch of every fine-tuning stage (against the baseline's); False when none ran."""
    curves = [(s["name"], s["info"]["epochs_log"]) for s in stages if s["info"].get("epochs_log")]
    if not curves:
        return False
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.8), dpi=110)
    for name, log in curves:
        ax.plot([e["epoch"] for e in log], [e["metrics/mAP50-95(B)"] for e in log], marker="o", label=name)
    ax.axhline(stages[0]["accuracy"]["map50_95"], color="gray", linestyle="--",
               label="the unpruned checkpoint (report's protocol)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set(xlabel="epoch", ylabel="val mAP50-95 (the trainer's validation)",
           title="fine-tuning: validation accuracy per epoch")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save(fig, path, dpi=110)
    return True


def verdict(report: dict[str, Any]) -> str:
    """The report's first lines: whether the gates hold, and whether INT8 stayed within its budget."""
    gates = report["gates"]
    if gates:
        shown = "; ".join(f"{g['gate']} {g['value']} (limit {g['limit']}): {'pass' if g['passed'] else 'FAIL'}"
                          for g in gates)
        line = f"**{'All gates pass' if report['passed'] else 'A gate FAILED'}**: {shown}."
    else:
        line = "**No gates set** (`--max-map-drop`, `--max-latency-ms`)."
    over = [s for s in report["stages"] if s["info"].get("mode") == "ptq" and not s["info"]["within_budget"]]
    for s in over:
        line += (f"\n\n**INT8 is over its budget**: {s['name']} loses {s['info']['drop_points']:.2f} mAP50-95 points "
                 f"against FP32 in its runtime (budget {s['info']['budget_points']}); {OVER_BUDGET}.")
    return line


def typing_line(typing: dict[str, Any]) -> str:
    head = typing["boundaries"]["head"]
    return (f"{typing['fp16_tensors']} FP16 and {typing['fp32_tensors']} FP32 activation tensors (FP32: the head's "
            f"box arithmetic, {len(typing['fp32_nodes'])} nodes); precision boundaries around the head: "
            f"{head['casts']} FP16/FP32 casts, {head['int8_to_float']} INT8->float, {head['float_to_int8']} "
            f"float->INT8")


def bundle_lines(bundle: dict[str, Any]) -> list[str]:
    """The device bundle's section of report.md: its typing, DeepStream files and DLA fallbacks."""
    lines = ["## Device bundle", "", f"- `{bundle['onnx']}`, built on the device by `{bundle['trtexec']}` "
             f"(strongly typed): {typing_line(bundle['typing'])}",
             f"- DeepStream: {', '.join(f'`{c}`' for c in bundle['deepstream']['configs'])}, "
             f"`{bundle['deepstream']['labels']}`; parser `{bundle['deepstream']['parser']}`, built with "
             f"`{bundle['deepstream']['build']}`"]
    if dla := bundle.get("dla"):
        ops = sorted({f"{f['op']} ({f['reason']})" for f in dla["gpu_fallback"]})
        lines.append(f"- DLA: {dla['dla_layers']} of {dla['layers']} layers run on DLA core 0; "
                     f"{len(dla['gpu_fallback'])} fall back to the GPU (`{dla['report']}` lists them): "
                     + "; ".join(ops))
    return [*lines, ""]


def markdown(report: dict[str, Any], plot_name: str, out: Path) -> str:
    model, target, host, data = report["model"], report["target"], report["host"], report["data"]
    stages = report["stages"]
    base, last = stages[0], stages[-1]
    base_ms = base["benchmark"]["end_to_end"]["p50_ms"]
    last_ms = last["benchmark"]["end_to_end"]["p50_ms"]
    network = report["final"].get("network")
    lines = [
        f"# edgecompress report: {Path(model['path']).name} for {target['name']}",
        "",
        verdict(report),
        "",
        f"**Final artifact** `{report['final']['artifact']}` ({last['name']}): mAP50-95 "
        f"{last['accuracy']['map50_95']:.3f} ({change_points(last, stages):+.2f} points against the checkpoint), "
        f"end to end p50 {last_ms:.1f} ms, the decoded frame to detections ({base_ms / last_ms:.2f}x the "
        f"checkpoint's speed in PyTorch; the network alone {network_inference_ms(last, stages):.1f} ms), "
        f"{last['benchmark']['file_mb']:.1f} MB."
        + (f" Beside it `{network}`, its network as Ultralytics' YOLO() loads it." if network else ""),
        "",
        f"- model: `{model['path']}` ({model['architecture']}, classes: {', '.join(model['names'])})",
        f"- data: `{data['path']}`, split `{data['split']}`, {data['images']} images"
        + "".join(f"; skipped as unusable: `{path}` ({why})" for path, why in data["unusable"].items()),
        f"- target: {target['name']} ({target['description']})",
        f"- host: {host['cpu']}, {host['cores']} cores, Python {host['python']}",
        "",
        "| stage | runtime | precision | mAP50 | mAP50-95 | change (pts) | params (M) | GFLOPs | size (MB) "
        "| end-to-end p50 / p90 / p99 (ms) | inference p50 (ms) | end to end / network | peak RSS (MB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in stages:
        acc, b = s["accuracy"], s["benchmark"]
        inf, e2e = b["inference"], b["end_to_end"]
        stored = f" ({s['info']['stored']} weights)" if s["info"].get("stored") else ""
        lines.append(
            f"| {s['name']} | {s['runtime']} | {precision(s)} | {acc['map50']:.3f} | {acc['map50_95']:.3f} "
            f"| {change_points(s, stages):+.2f}{'*' if 'network' in acc else ''} | {s['parameters'] / 1e6:.2f} "
            f"| {s['gflops']:.2f} | {b['file_mb']:.1f}{stored} "
            f"| {e2e['p50_ms']:.1f} / {e2e['p90_ms']:.1f} / {e2e['p99_ms']:.1f} | {inf['p50_ms']:.1f} "
            f"| {e2e['p50_ms'] / network_inference_ms(s, stages):.2f}x | {b['memory']['peak_rss_mb']:.0f} |"
        )
    lines += ["", f"![accuracy against latency]({plot_name})", ""]
    details = [line for s in report["stages"] for line in stage_details(s, out)]
    if details:
        lines += ["## Stages", "", *details, ""]
    if report.get("bundle"):
        lines += bundle_lines(report["bundle"])
    if report["notes"]:
        lines += ["## Notes", "", *[f"- {note}" for note in report["notes"]], ""]
    lines += ["Change is mAP50-95 points against the baseline checkpoint, measured the same way (Ultralytics' "
              "validator, batch 1, square letterboxed input): + is a gain. *: Ultralytics' validator cannot feed an "
              "artifact with the frame inside: its network's change plus what going inside changed, both fed the "
              "eval images as a device does (Stages). Latency: batch 1, after warm-up. End to end, the figure that "
              "counts: each image of the eval split decoded once beforehand at its native size, then the frame to "
              "detections in its pixels (letterbox, inference, NMS: on the host or inside the artifact). Inference: "
              "the artifact alone on a fixed input; end to end / network: over its network's inference. Sizes are "
              "the artifacts' files; a PyTorch checkpoint's weights are stored as named.", ""]
    return "\n".join(lines)


def _relative(path: Path, out: Path) -> str:
    try:
        return str(path.relative_to(out))
    except ValueError:
        return str(path)
